"""Accuracy without labels: the artifact carries ATC thresholds fitted on validation and a drift reference; the
running service counts predictions against them, and what /metrics says equals the same estimate computed offline
on the same photos."""
from __future__ import annotations

import json
import re
import shutil

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from contract import monitoring
from contract.card import load_card
from contract.preprocess import preprocess
from contract.scores import softmax
from serving.launch import Server

pytestmark = pytest.mark.slow


def test_the_artifact_carries_thresholds_a_reference_and_a_self_check(artifact):
    card = load_card(artifact)
    m = card.monitoring
    assert set(m.thresholds) == {"mc", "ne"} and 0 < m.thresholds["mc"] <= 1 and m.thresholds["ne"] <= 0
    fitted = m.fitted_on
    assert fitted.split == "val" and fitted.n > 0
    acc = fitted.accuracy
    assert fitted.standard_error == pytest.approx((acc * (1 - acc) / fitted.n) ** 0.5)
    assert set(m.reference_shares) == set(card.classes) and abs(sum(m.reference_shares.values()) - 1) < 1e-6
    check = m.self_check
    assert check.accuracy == pytest.approx(card.test_accuracy)
    assert sum(m.confidence_histogram.counts) == check.n == card.metrics.test.n
    report = json.loads((artifact / "report" / "metrics.json").read_text())
    assert report["monitoring"]["self_check"] == check.model_dump()  # in the report too


def _scrape(url: str) -> str:
    return httpx.get(url + "/metrics").text


def _value(text: str, pattern: str) -> float:
    found = re.findall(pattern + r" ([0-9.eE+-]+)", text)
    assert found, pattern
    return float(found[0])


def test_counts_from_metrics_equal_the_offline_estimate(artifact, data_dir, tmp_path):
    card = load_card(artifact)
    photos = [p for c in ("ants", "bees") for p in sorted((data_dir / "val" / c).glob("*.jpg"))[:15]]
    batch = np.stack([preprocess(p.read_bytes(), card.spec, 1 << 40) for p in photos])
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = softmax(session.run(["logits"], {"images": batch})[0], card.temperature)
    offline = monitoring.estimates(probs, card.monitoring.thresholds)

    srv = Server({"SERVING_MODEL_DIR": str(artifact)}, tmp_path / "serve.log")
    try:
        assert srv.wait_ready(), (tmp_path / "serve.log").read_text()[-2000:]
        before = _scrape(srv.url)
        assert _value(before, r'imgcls_atc_confident_total\{score="mc"\}') == 0  # present from the start, at 0
        for p in photos:
            assert httpx.post(srv.url + "/predict", files={"image": p.open("rb")}, timeout=60).status_code == 200
        text = _scrape(srv.url)
    finally:
        srv.stop()
    n = _value(text, "imgcls_confidence_count")
    assert n == len(photos)
    for score in ("mc", "ne"):
        served = _value(text, r'imgcls_atc_confident_total\{score="%s"\}' % score) / n
        assert served == pytest.approx(offline[f"atc_{score}"], abs=1e-9)
        assert _value(text, r'imgcls_atc_threshold\{score="%s"\}' % score) == pytest.approx(
            card.monitoring.thresholds[score])
    assert _value(text, "imgcls_confidence_sum") / n == pytest.approx(offline["ac"], abs=1e-5)
    for c, share in card.monitoring.reference_shares.items():
        assert _value(text, r'imgcls_reference_class_share\{predicted="%s"\}' % c) == pytest.approx(share)


def test_a_model_without_the_block_still_serves_and_says_so_once(artifact, data_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    card = json.loads((old / "model.json").read_text())
    del card["monitoring"]  # exported before the block existed
    (old / "model.json").write_text(json.dumps(card))
    log = tmp_path / "serve.log"
    srv = Server({"SERVING_MODEL_DIR": str(old)}, log)
    try:
        assert srv.wait_ready(), log.read_text()[-2000:]
        photo = sorted((data_dir / "val" / "bees").glob("*.jpg"))[0]
        for _ in range(3):
            assert httpx.post(srv.url + "/predict", files={"image": photo.open("rb")}, timeout=60).status_code == 200
        text = _scrape(srv.url)
    finally:
        srv.stop()
    assert "imgcls_atc_threshold{" not in text and "imgcls_atc_confident_total{" not in text
    assert _value(text, "imgcls_confidence_count") == 3
    assert log.read_text().count("has no monitoring block") == 1
