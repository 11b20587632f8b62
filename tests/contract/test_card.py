"""model.json typed all the way down (contract.card): artifacts written by earlier code keep loading, with every
block typed; fields a newer trainer adds are kept; a card that breaks the contract is refused with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.canary import Canary
from contract.card import ArtifactError, ModelCard, load_card
from contract.monitoring import Monitoring

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_card_written_before_the_blocks_were_typed_loads_typed():
    """model-0764df5.json: the demo model's card as commit 0764df5 wrote it (session 10, with its int8 variant)."""
    raw = json.loads((FIXTURES / "model-0764df5.json").read_text())
    card = ModelCard.model_validate(raw)
    assert card.test_accuracy == raw["metrics"]["test"]["accuracy"]
    assert card.metrics.test.per_class["ants"].support == raw["metrics"]["test"]["per_class"]["ants"]["support"]
    assert isinstance(card.monitoring, Monitoring) and card.monitoring.thresholds == raw["monitoring"]["thresholds"]
    assert card.monitoring.self_check.n == card.metrics.test.n
    assert card.parity["batch_1"].argmax_equal is True
    assert card.skew_gate.gap_points == raw["skew_gate"]["gap_points"]
    assert card.skew_gate.int8.served_accuracy == raw["skew_gate"]["int8"]["served_accuracy"]
    assert card.skew_gate.model_dump()["torch_accuracy"] == raw["skew_gate"]["torch_accuracy"]  # kept, untyped
    assert card.publish_gate.passed and card.publish_gate.majority_baseline.n == card.metrics.test.n
    int8 = card.variants["int8"]
    assert isinstance(int8.canary, Canary) and int8.canary.file == "canary.npz"
    assert int8.calibration.method in int8.calibration.validation_agreement_by_method
    # written back, it is the same document (the typed blocks' absent optional fields stay absent)
    assert json.loads(card.model_dump_json(exclude_unset=True)) == raw


def test_fields_a_newer_trainer_adds_are_kept():
    raw = json.loads((FIXTURES / "model-0764df5.json").read_text())
    raw["monitoring"]["drift_window"] = 500
    raw["metrics"]["test"]["balanced_accuracy"] = 0.93
    card = ModelCard.model_validate(raw)
    assert card.monitoring.model_dump()["drift_window"] == 500
    assert card.metrics.test.model_dump()["balanced_accuracy"] == 0.93


def test_card_without_int8_fields_still_loads():
    """Artifacts written before int8 existed keep loading (no variants_refused, no int8 fields in variants)."""
    old = {"name": "m", "version": "v", "classes": ["a", "b"], "image_size": 64, "resize_size": 73,
           "interpolation": "bilinear", "sha256": "0" * 64,
           "variants": {"fp16": {"file": "model.fp16.onnx", "sha256": "1" * 64, "max_abs_diff_vs_fp32": 0.01,
                                 "top1_agreement": 1.0, "limits": {}, "n": 3}}}
    card = ModelCard.model_validate_json(json.dumps(old))
    assert card.variants_refused == {} and card.variants["fp16"].canary is None
    assert np.isclose(card.variants["fp16"].top1_agreement, 1.0)
    assert card.monitoring is None and card.test_accuracy is None


def test_a_card_that_breaks_a_typed_block_is_refused_with_the_field(tmp_path):
    raw = json.loads((FIXTURES / "model-0764df5.json").read_text())
    raw["monitoring"]["thresholds"]["mc"] = "high"
    (tmp_path / "model.json").write_text(json.dumps(raw))
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"(?s)does not follow the artifact contract.*monitoring\.thresholds\.mc"):
        load_card(tmp_path, verify=False)
