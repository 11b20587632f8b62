"""training.diagnostics: each finding appears when its pattern is in the epochs or the counts and not otherwise,
and the report puts the findings first (per-class recall first, rarest first, when classes are imbalanced)."""
from __future__ import annotations

import json

import numpy as np

from training import diagnostics
from training.config import load_config
from training.data import ImageSet
from training.metrics import full
from training.report import write_report


def epochs(phase: int, val_acc: list[float], train_acc: list[float] | None = None,
           val_loss: list[float] | None = None, train_loss: list[float] | None = None) -> list[dict]:
    n = len(val_acc)
    train_acc = train_acc or val_acc
    val_loss = val_loss or [1 - v for v in val_acc]
    train_loss = train_loss or val_loss
    return [{"phase": phase, "epoch": i + 1, "val_acc": val_acc[i], "val_macro_f1": val_acc[i],
             "train_acc": train_acc[i], "val_loss": val_loss[i], "train_loss": train_loss[i]} for i in range(n)]


def test_still_improving_when_the_last_epoch_is_a_new_best():
    history = epochs(1, [0.5, 0.6]) + epochs(2, [0.70, 0.74, 0.78])
    found = diagnostics.still_improving(history, "val_acc")
    assert found is not None and found.evidence["phase"] == 2 and "phase2.epochs, now 3" in found.message
    assert diagnostics.still_improving(epochs(1, [0.5]) + epochs(2, [0.7, 0.8, 0.8]), "val_acc") is None, \
        "equal to the best is a plateau, not an improvement"
    assert diagnostics.still_improving(epochs(2, [0.7, 0.9, 0.8]), "val_acc") is None
    falling_loss = epochs(2, [0.7, 0.7, 0.7], val_loss=[0.5, 0.4, 0.3])
    assert diagnostics.still_improving(falling_loss, "val_loss") is not None, "for the loss, lower is better"
    assert diagnostics.still_improving(epochs(2, [0.7]), "val_acc") is None


def test_overfitting_from_the_gap_or_a_rising_validation_loss():
    cfg = load_config(None, ["phase2.unfreeze=layer3"], environ={})
    gap = epochs(2, [0.70, 0.72], train_acc=[0.90, 0.99])
    found = diagnostics.overfitting(gap, cfg)
    assert found is not None and found.evidence["gap_points"] == 27.0 and "phase2.unfreeze=layer4" in found.message
    rising = epochs(2, [0.80, 0.80, 0.80], train_acc=[0.82, 0.84, 0.86], val_loss=[0.40, 0.45, 0.50],
                    train_loss=[0.40, 0.30, 0.20])
    found = diagnostics.overfitting(rising, cfg)
    assert found is not None and found.evidence["val_loss_rising"] and found.evidence["val_loss_lowest_at_epoch"] == 1
    agree = epochs(2, [0.80, 0.84, 0.86], train_acc=[0.82, 0.86, 0.90])
    assert diagnostics.overfitting(agree, cfg) is None
    top_only = load_config(None, [], environ={})
    assert "phase2.unfreeze" not in diagnostics.overfitting(gap, top_only).message, "one stage: none fewer to try"


def test_imbalance_from_the_training_counts():
    found = diagnostics.imbalanced({"ok": 280, "crack": 10, "scratch": 40})
    assert found is not None and found.evidence["ratio"] == 28.0 and "'crack' 10" in found.message
    assert diagnostics.imbalanced({"ants": 120, "bees": 50}) is None


def test_the_report_puts_findings_and_the_rarest_recall_first(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 8 + [1] * 2 + [2] * 4)
    logits = np.eye(3)[labels] * 4 + rng.normal(0, 0.1, (len(labels), 3))
    logits[8] = [5, 0, 0]  # one of the two rare images wrong: the lowest recall
    images = ImageSet(["common", "rare", "middle"], labels.tolist(), array=np.zeros((len(labels), 32, 32, 3), np.uint8))
    found = [diagnostics.imbalanced({"common": 80, "rare": 10, "middle": 40}).as_dict()]
    page = write_report(tmp_path, images, logits, labels, full(logits, labels, images.classes), [], {"name": "t"},
                        findings=found).read_text()
    assert page.index("Diagnostics") < page.index("Per class") < page.index("Test metrics")
    assert page.index("<td>rare</td>") < min(page.index("<td>common</td>"), page.index("<td>middle</td>"))
    assert json.loads((tmp_path / "diagnostics.json").read_text()) == found
    balanced = write_report(tmp_path / "b", images, logits, labels, full(logits, labels, images.classes), [],
                            {"name": "t"}).read_text()
    assert balanced.index("Test metrics") < balanced.index("Per class") and "none:" in balanced
