"""`python -m training tune` (training.tune) on real photos at a small size: the search reads no test image, the
chosen recipe's full run reproduces the search's validation value, the configured recipe is never beaten by a worse
one, the image sizes are tried last and the better one trained, the search's record reaches model.json, trials.csv
and the report; the budget stops a running trial; a search stopped by SIGTERM resumes, rerunning the interrupted
trial only; `python -m training trial` (Katib's) prints what Katib's collector reads."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from helpers import ROOT

from training import tune, tune_length, tune_space
from training.config import load_config
from training.data import ImageSet

pytestmark = pytest.mark.slow
SMALL = ["data.image_size=64", "data.resize_size=73", "data.num_workers=0", "model.backbone=efficientnet_lite0",
         "data.limit_per_class=40", "threads=2", "export.int8=false", "export.fp16=false", "phase1.epochs=3",
         "phase2.epochs=3", "tune.max_epochs=3"]
# Katib's StdOut metrics collector's default format (pkg/metricscollector/v1beta1/common/const.go)
KATIB_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def small(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return SMALL + [f"data.path={data_dir}", f"output_dir={out / 'run'}", f"artifacts_dir={out / 'art'}", "name=t",
                    *extra]


def test_search_then_one_full_run_of_the_chosen_recipe(data_dir, tmp_path, monkeypatch):
    read_splits = tune.prepared_splits

    def test_split_out_of_reach(cfg):  # the search gets a test split that cannot be read
        splits, report = read_splits(cfg)
        splits.test = ImageSet(splits.test.classes, splits.test.labels,
                               paths=[Path("/nonexistent/the-search-read-the-test-split")] * len(splits.test))
        return splits, report

    monkeypatch.setattr(tune, "prepared_splits", test_split_out_of_reach)
    cfg = load_config(None, small(data_dir, tmp_path, "tune.head_trials=5", "tune.trials=3", "tune.image_sizes=[48]"),
                      environ={})
    result = tune.tune_job(cfg)
    assert result["published"] and 0.5 < result["test_accuracy"] <= 1

    version = Path(result["artifact"])
    card = json.loads((version / "model.json").read_text())
    tuning = card["tuning"]
    assert tuning["objective"] == "val_acc" and "balanced" in tuning["why"]
    assert tuning["head_trials"] == 5 and tuning["finetune_trials"] == 3
    assert tuning["best_value"] >= tuning["default_value"], "the configured recipe is never replaced by a worse one"
    # the full run of the chosen recipe lands where the search said it would (same seeds, same head start); without
    # a budget nothing lengthens it, though its epoch's cost is known
    assert tuning["final_phase2_epochs"] is None and tuning["phase2_epoch_seconds"] > 0
    best_val = card["metrics"]["best_val"]
    assert best_val["val_acc"] == pytest.approx(tuning["best_value"], abs=1e-9)
    for key, value in tuning["params"].items():
        node = card["config"]
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    rows = list(csv.DictReader(open(tmp_path / "run" / "tune" / "trials.csv")))
    assert [r["search"] for r in rows].count("head") == 5 and [r["search"] for r in rows].count("finetune") == 3
    assert rows[0]["configured"] == "True"
    # image size last: the chosen recipe at 48 px too (its own feature cache); the better size is trained in full,
    # a tie keeping the configured 64 px
    sizes = {int(k): v for k, v in tuning["image_sizes"].items()}
    assert list(sizes) == [64, 48] and [r["data.image_size"] for r in rows if r["search"] == "size"] == ["64", "48"]
    chosen = 48 if sizes[48] > sizes[64] else 64
    assert card["config"]["data"]["image_size"] == chosen and tuning["best_value"] == sizes[chosen]
    assert card["config"]["data"]["resize_size"] == {64: 73, 48: 55}[chosen], "the configured ratio R/S"
    assert {p.name for p in (tmp_path / "run" / "tune").glob("phase1_features_*")} == \
        {"phase1_features_64px.pt", "phase1_features_48px.pt"}
    assert not (tmp_path / "run" / "checkpoints" / "phase1_features.pt").exists(), \
        "the final run loads the search's feature cache instead of building its own"
    page = (version / "report" / "report.html").read_text()
    assert "tune_history.png" in page and (version / "report" / "tune_history.png").is_file()
    assert '"tuning"' in (version / "report" / "metrics.json").read_text()
    # the choice as a job config a team can keep: it loads, and it is the final run's config
    kept = load_config(tmp_path / "run" / "tune" / "tuned.yaml", environ={})
    assert kept.model_dump(mode="json") == card["config"]


def test_a_search_stopped_by_sigterm_resumes_with_the_interrupted_trial(data_dir, tmp_path):
    args = [sys.executable, "-m", "training", "tune"] + [a for s in small(
        data_dir, tmp_path, "tune.head_trials=3", "tune.trials=2", "tune.prune=false", "tune.image_sizes=[]")
        for a in ("--set", s)]
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 600
        while '"phase": 2' not in log.read_text() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # the first fine-tuning trial is in its first of three phase-2 epochs
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 75, log.read_text()[-2000:]
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search finetune: trial 0 was interrupted; it runs again with the same settings" in again.stderr
    assert "the search cannot tell apart recipes closer than that" in again.stderr, "37 validation photos"
    storage = f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}"
    heads = optuna.load_study(study_name="head", storage=storage)
    assert [t.state.name for t in heads.trials] == ["COMPLETE"] * 3, "finished trials are not run again"
    finetunes = optuna.load_study(study_name="finetune", storage=storage)
    states = [t.state.name for t in finetunes.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and finetunes.trials[1].params == finetunes.trials[0].params


def test_the_budget_stops_a_running_trial_at_its_next_epoch(data_dir, tmp_path):
    cfg = load_config(None, small(data_dir, tmp_path, "tune.head_trials=4", "tune.trials=3", "tune.image_sizes=[]",
                                  "tune.prune=false", "tune.budget_minutes=0.01"), environ={})
    tune.tune_job(cfg)  # 0.6 s: each stage's time is up by the end of its configured first trial
    heads = optuna.load_study(study_name="head", storage=f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}")
    first, *others = heads.trials
    assert first.user_attrs["configured"] and first.state.name == "COMPLETE" and "cut" not in first.user_attrs
    assert others, "a second trial starts (the timeout is checked between trials) and is cut"
    for t in others:
        assert t.state.name == "PRUNED" and t.user_attrs["cut"] == "budget" and list(t.intermediate_values) == [1]
    # the feature cache is built before the head stage's clock starts, not in its first trial (on CIFAR-10 it took
    # the whole head share, and every later head trial was cut)
    cache = tmp_path / "run" / "tune" / "phase1_features_64px.pt"
    assert datetime.fromtimestamp(cache.stat().st_mtime) <= first.datetime_start


def test_the_final_run_spends_final_minutes_on_phase_2_and_early_stopping_ends_it(data_dir, tmp_path):
    cfg = load_config(None, small(data_dir, tmp_path, "tune.head_trials=2", "tune.trials=2", "tune.image_sizes=[]",
                                  "tune.prune=false", "tune.final_minutes=0.5", "early_stop.patience=2"), environ={})
    result = tune.tune_job(cfg)
    card = json.loads((Path(result["artifact"]) / "model.json").read_text())
    tuning = card["tuning"]
    chosen, final = tuning["params"]["phase2.epochs"], tuning["final_phase2_epochs"]
    assert final == int(30 // tuning["phase2_epoch_seconds"]) and final > chosen, "as many epochs as fit in 30 s"
    assert card["config"]["phase2"]["epochs"] == final
    assert load_config(tmp_path / "run" / "tune" / "tuned.yaml", environ={}).model_dump(mode="json") == card["config"]
    values = [r["val_acc"] for r in result["history"] if r["phase"] == 2]
    if len(values) < final:  # stopped early: the last `patience` epochs improved on nothing before them
        assert max(values[-2:]) <= max(values[:-2] + [r["val_acc"] for r in result["history"] if r["phase"] == 1])
    assert card["metrics"]["best_val"]["val_acc"] == max(r["val_acc"] for r in result["history"])


def test_final_length_fills_the_minutes_and_never_shortens():
    def cfg(*sets):
        return load_config(None, ["data.path=/x", *sets], environ={})

    assert tune_length.final_length(cfg("tune.final_minutes=1"), 4, 7.0) == 8
    assert tune_length.final_length(cfg("tune.budget_minutes=1"), 4, 7.0) == 8, "the search's budget by default"
    assert tune_length.final_length(cfg("tune.final_minutes=1", "tune.budget_minutes=9"), 4, 7.0) == 8
    assert tune_length.final_length(cfg("tune.final_minutes=1"), 9, 7.0) is None, "never shorter than chosen"
    assert tune_length.final_length(cfg(), 4, 7.0) is None, "no budget: the recipe as chosen"
    assert tune_length.final_length(cfg("tune.final_minutes=1"), 4, None) is None, "nothing measured its epochs"


def test_katib_trial_prints_what_katibs_collector_reads_and_resumes(data_dir, tmp_path):
    args = [sys.executable, "-m", "training", "trial"] + [a for s in small(data_dir, tmp_path, "phase2.epochs=1")
                                                           for a in ("--set", s)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    epochs = [dict((m[0], float(m[1])) for m in KATIB_METRIC.findall(line)) for line in lines
              if line.startswith("phase=")]
    assert len(epochs) == 4 and all({"val_acc", "val_macro_f1", "val_loss"} <= set(e) for e in epochs)
    best = dict((m[0], float(m[1])) for m in KATIB_METRIC.findall(lines[-1]))
    assert lines[-1].startswith("best ") and best["val_acc"] == max(e["val_acc"] for e in epochs)
    assert not (tmp_path / "run" / "report" / "report.html").exists() and not (tmp_path / "art").exists(), \
        "a trial neither evaluates on test nor exports"
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == lines[-1], "a retried pod resumes, not retrains"
    assert '"msg": "resumed"' in again.stderr and '"msg": "epoch"' not in again.stderr


def test_the_objective_follows_the_class_balance():
    cfg = load_config(None, [], environ={})
    assert tune_space.objective_of(cfg, {"a": 100, "b": 90})[0] == "val_acc"
    metric, why = tune_space.objective_of(cfg, {"ok": 280, "crack": 10})
    assert metric == "val_macro_f1" and "28.0:1" in why
    forced = load_config(None, ["tune.objective=val_acc"], environ={})
    assert tune_space.objective_of(forced, {"ok": 280, "crack": 10})[0] == "val_acc"
    assert tune_space.unfreeze_choices(cfg) == ["top", "layer3", "layer2"]
    assert tune_space.size_choices(cfg) == [224, 160, 288], "the configured size first, then 64 px either side"
    assert tune_space.size_choices(load_config(None, ["tune.image_sizes=[]"], environ={})) == [224]
