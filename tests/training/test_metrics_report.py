"""Metrics against hand-computed values; the report's files; the small-CNN baseline end to end."""
import json

import numpy as np
import pytest
from PIL import Image

from training import metrics
from training.calibrate import fit_temperature


def _logits(pred, c, margin=2.0):
    out = np.zeros((len(pred), c), np.float32)
    out[np.arange(len(pred)), pred] = margin
    return out


def test_binary_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 1])
    m = metrics.full(_logits(pred, 2), labels, ["neg", "pos"])
    # pos: TP=4 FP=1 FN=1 -> P=R=F1=0.8; neg: TP=2 FP=1 FN=1 -> P=R=F1=2/3
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class"]["pos"]["precision"] == pytest.approx(0.8)
    assert m["per_class"]["neg"]["recall"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]
    # scores for class 1 take two values: 0.88 when predicted pos, 0.12 otherwise; AUC by counting pairs
    pos_scores, neg_scores = [1, 1, 1, 0, 1], [0, 0, 1]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos_scores for n in neg_scores]
    assert m["roc_auc"] == pytest.approx(sum(pairs) / len(pairs))
    assert "top5_accuracy" not in m


def test_multiclass_by_hand():
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    pred = np.array([0, 1, 2, 3, 4, 1, 1, 2, 0, 4])
    m = metrics.full(_logits(pred, 5), labels, list("abcde"))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["a"]["recall"] == 0.5
    assert "top5_accuracy" not in m and 0.5 < m["roc_auc"] <= 1  # top 5 of 5 classes says nothing
    assert np.array(m["confusion_matrix"]).trace() == 8


def test_top5_by_hand():
    # 7 classes; the true class ranks 1st, 3rd, 5th, 6th and 7th: 3 of 5 in the top 5
    ranks = [0, 2, 4, 5, 6]
    logits = np.zeros((5, 7), np.float32)
    labels = np.arange(5)
    for i, rank in enumerate(ranks):
        others = [c for c in range(7) if c != labels[i]]
        order = others[:rank] + [labels[i]] + others[rank:]  # descending scores
        logits[i, order] = np.arange(7, 0, -1)
    m = metrics.full(logits, labels, list("abcdefg"))
    assert m["top5_accuracy"] == pytest.approx(3 / 5) and m["accuracy"] == pytest.approx(1 / 5)


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin (0.8,0.87]: conf 0.9 acc 0.5 -> |0.4| * 0.5; bin (0.53,0.6]: conf 0.6 acc 1.0 -> |0.4| * 0.5
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_temperature_scaling_softens_overconfidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3)) * 3
    logits[np.arange(400), labels] += 3 * (rng.random(400) < 0.6)  # right 60% of the time, but very sure
    t = fit_temperature(logits.astype(np.float32), labels)
    assert t > 1.2
    before = metrics.full(logits, labels, list("abc"))["ece"]
    after = metrics.full(logits, labels, list("abc"), temperature=t)["ece"]
    assert after < before


@pytest.mark.slow
def test_report_files(trained):
    cfg, _ = trained
    report = cfg.output_dir / "report"
    for name in ("curves.png", "confusion_matrix.png", "samples.png", "metrics.json", "report.html"):
        assert (report / name).is_file(), name
    for png in report.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG"
    page = (report / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "ants" in page and "bees" in page and "curves.png" in page
    assert "<h2>Diagnostics</h2>" in page and isinstance(json.loads((report / "diagnostics.json").read_text()), list)
    test = json.loads((report / "metrics.json").read_text())["test"]
    assert set(test["per_class"]) == {"ants", "bees"}
    # heatmaps of right answers, and of the mistakes where there are any
    assert (report / "right_heatmaps.png").is_file() and "right_heatmaps.png" in page
    mistakes = round(test["n"] * (1 - test["accuracy"]))
    assert (report / "mistakes_heatmaps.png").is_file() == (mistakes > 0)
    assert (cfg.artifacts_dir / cfg.name / (cfg.artifacts_dir / cfg.name / "LATEST").read_text().strip()
            / "report" / "report.html").is_file()


@pytest.mark.slow
def test_baseline_runs_end_to_end(tmp_path, data_dir):
    from training.compare import baseline
    from training.config import load_config
    cfg = load_config(None, [f"data.path={data_dir}", "data.image_size=32", "data.resize_size=36",
                             "data.limit_per_class=24", "data.num_workers=0", "phase1.epochs=1", "phase2.epochs=1",
                             f"output_dir={tmp_path / 'run'}", "threads=2"], environ={})
    rows = baseline(cfg, tmp_path / "RESULTS.md")
    scratch = json.loads((tmp_path / "run-small-cnn" / "final" / "metrics.json").read_text())["test"]
    assert rows[-1]["backbone"] == "small_cnn" and rows[-1]["accuracy"] == scratch["accuracy"]
    table = (tmp_path / "RESULTS.md").read_text()
    assert f"| small CNN from scratch | small_cnn | none | {scratch['accuracy']:.4f} |" in table
    assert (tmp_path / "run" / "report" / "comparison.md").is_file()
