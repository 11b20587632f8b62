"""A run killed with SIGTERM mid-phase and restarted ends with the same weights and metrics as an uninterrupted run."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT

pytestmark = pytest.mark.slow


def _cmd(data_dir, out):
    return [sys.executable, "-m", "training", "train",
            "--set", f"data.path={data_dir}", "--set", f"output_dir={out}", "--set", "export.enabled=false",
            "--set", "data.image_size=48", "--set", "data.resize_size=56", "--set", "data.limit_per_class=32",
            "--set", "data.batch_size=8", "--set", "data.num_workers=1", "--set", "model.backbone=efficientnet_lite0",
            "--set", "phase1.epochs=2", "--set", "phase2.epochs=3", "--set", "threads=1",
            "--set", "augment.mixup_alpha=0.2", "--set", "early_stop.patience=9"]


def _final(out):
    bundle = torch.load(out / "final" / "model.pt", weights_only=False)
    return bundle["state_dict"], json.loads((out / "final" / "metrics.json").read_text())


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cmd(data_dir, straight), cwd=ROOT, check=True, capture_output=True)
    proc = subprocess.Popen(_cmd(data_dir, killed), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait for phase 2's first epoch, then kill mid-way through the next one
        if '"phase": 2, "epoch": 1' in line:
            time.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            break
    proc.stderr.read()
    assert proc.wait(60) == 75, "SIGTERM must checkpoint and exit with the distinct code 75"
    ckpt = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["state"]["phase"] == 2
    subprocess.run(_cmd(data_dir, killed), cwd=ROOT, check=True, capture_output=True)
    (w1, m1), (w2, m2) = _final(straight), _final(killed)
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1), "resumed run ended with different weights"
    assert m1["test"]["accuracy"] == m2["test"]["accuracy"]
    assert m1["test"]["confusion_matrix"] == m2["test"]["confusion_matrix"]
