"""Kills at any point of either phase (SIGTERM, SIGKILL, mid checkpoint write), torn checkpoints: the restarted run
resumes from the last complete checkpoint and ends with the same weights and metrics as one that never stopped."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from training.checkpoint import load

pytestmark = pytest.mark.slow
HOOK = Path(__file__).with_name("fault_hook.py")


def _args(data_dir, out, *extra):
    return ["train", "--set", f"data.path={data_dir}", "--set", f"output_dir={out}", "--set", "export.enabled=false",
            "--set", "data.image_size=48", "--set", "data.resize_size=56", "--set", "data.limit_per_class=32",
            "--set", "data.batch_size=8", "--set", "data.num_workers=1", "--set", "model.backbone=efficientnet_lite0",
            "--set", "phase1.epochs=2", "--set", "phase2.epochs=3", "--set", "threads=1",
            "--set", "augment.mixup_alpha=0.2", "--set", "early_stop.patience=9", *extra]


def _run(data_dir, out) -> str:
    done = subprocess.run([sys.executable, "-m", "training", *_args(data_dir, out)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _final(out):
    bundle = load(out / "final" / "model.pt")
    return bundle["state_dict"], json.loads((out / "final" / "metrics.json").read_text())


def _assert_same_result(reference, out, why):
    (w1, m1), (w2, m2) = reference, _final(out)
    assert w1.keys() == w2.keys()
    differ = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    # how far apart, where they differ: on CUDA without deterministic kernels bench/gpu/run.sh reports this figure
    worst = max(((w1[k].float() - w2[k].float()).abs().max().item() for k in differ), default=0.0)
    assert not differ, (f"{why}: resumed run ended with different weights in {len(differ)} of {len(w1)} tensors "
                        f"(largest difference {worst:.3g}; test accuracy {m1['test']['accuracy']} vs "
                        f"{m2['test']['accuracy']})")
    assert m1["test"]["accuracy"] == m2["test"]["accuracy"], why
    assert m1["test"]["confusion_matrix"] == m2["test"]["confusion_matrix"], why


def _kill_after(cmd, marker: str, delay: float, sig) -> int:
    """Start cmd, wait for a stderr line containing marker, wait delay seconds, send sig; return the exit code."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        if marker in line:
            time.sleep(delay)
            proc.send_signal(sig)
            break
    proc.stderr.read()
    return proc.wait(60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("straight")
    _run(data_dir, out)
    return _final(out)


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, data_dir, reference):
    code = _kill_after([sys.executable, "-m", "training", *_args(data_dir, tmp_path)], '"phase": 2, "epoch": 1',
                       0.4, signal.SIGTERM)
    assert code == 75, "SIGTERM must checkpoint and exit with the distinct code 75"
    assert load(tmp_path / "checkpoints" / "last.pt")["state"]["phase"] == 2
    _run(data_dir, tmp_path)
    _assert_same_result(reference, tmp_path, "SIGTERM")


def test_random_kills_in_both_phases_resume_to_the_same_result(tmp_path, data_dir, reference):
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    points = [(1, rng.randint(1, 2)), (2, rng.randint(1, 2)), (2, 3)]
    kills = []
    for phase, epoch in points:  # SIGTERM or SIGKILL at a random instant after that epoch's end, then restart
        sig, delay = rng.choice([signal.SIGTERM, signal.SIGKILL]), rng.uniform(0.0, 0.9)
        code = _kill_after([sys.executable, "-m", "training", *_args(data_dir, tmp_path)],
                           f'"phase": {phase}, "epoch": {epoch},', delay, sig)
        kills.append((phase, epoch, sig.name, round(delay, 2), code))
        assert code in (0, 75, -signal.SIGKILL, -signal.SIGTERM), f"seed {seed}: {kills}"
    _run(data_dir, tmp_path)
    _assert_same_result(reference, tmp_path, f"KILL_SEED={seed}, kills {kills}")


@pytest.mark.parametrize("mode", ["before_fsync", "between_renames"])
def test_sigkill_during_checkpoint_write(tmp_path, data_dir, reference, mode):
    env = {"FAULT_MODE": mode, "FAULT_AT": "4"}  # the 4th save of last.pt: phase 2, epoch 1
    os.environ.update(env)
    try:
        code = _kill_after([sys.executable, str(HOOK), *_args(data_dir, tmp_path)], "FAULT-POINT", 0.0,
                           signal.SIGKILL)
    finally:
        for k in env:
            os.environ.pop(k)
    assert code == -signal.SIGKILL
    folder = tmp_path / "checkpoints"
    assert list(folder.glob(".last.pt.*.tmp")), "the kill should have left the half-done temporary file"
    assert (folder / "last.pt").exists() == (mode == "before_fsync")
    log = _run(data_dir, tmp_path)
    assert "removed temporary files of an interrupted checkpoint write" in log
    expected = "last.pt" if mode == "before_fsync" else "last.prev.pt"
    assert f'"checkpoint": "{expected}"' in log
    _assert_same_result(reference, tmp_path, mode)


def test_torn_checkpoint_is_never_loaded(tmp_path, data_dir, reference):
    code = _kill_after([sys.executable, "-m", "training", *_args(data_dir, tmp_path)], '"phase": 2, "epoch": 2',
                       0.0, signal.SIGTERM)
    assert code == 75
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy cut short would leave it
    log = _run(data_dir, tmp_path)
    assert "fails its sha256 check" in log and '"checkpoint": "last.prev.pt"' in log
    _assert_same_result(reference, tmp_path, "torn last.pt")


@pytest.fixture
def volume(tmp_path):
    """A real small tmpfs mounted in a private user+mount namespace, reached through /proc/<pid>/root."""
    holders = []

    def mount(size: str, readonly: bool = False) -> Path:
        point = tmp_path / f"vol{len(holders)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        holder = subprocess.Popen(["unshare", "-rm", "--propagation", "private", "sh", "-c",
                                   f"mount -t tmpfs -o {opts} none {point} && echo mounted && exec sleep 3600"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        holders.append(holder)
        if holder.stdout.readline().strip() != "mounted":  # a kernel or sandbox without user namespaces
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {holder.stderr.read().strip()}")
        return Path(f"/proc/{holder.pid}/root") / point.relative_to("/")

    yield mount
    for h in holders:
        h.kill()
        h.wait()


def test_read_only_output_fails_at_once_with_a_clear_error(volume, data_dir):
    out = volume("4m", readonly=True) / "run"
    done = subprocess.run([sys.executable, "-m", "training", *_args(data_dir, out)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert "is not writable: Read-only file system" in done.stderr and "Traceback" not in done.stderr


def test_disk_full_keeps_the_previous_checkpoint_then_resumes(volume, data_dir, reference):
    vol = volume("160m")
    out = vol / "run"
    cmd = [sys.executable, "-m", "training", *_args(data_dir, out)]
    assert _kill_after(cmd, '"phase": 1, "epoch": 1,', 0.0, signal.SIGTERM) == 75
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    st = os.statvfs(vol)
    filler = vol / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (2 << 20)))  # leave 2 MiB: less than one checkpoint
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "could not write checkpoint" in done.stderr and "No space left on device" in done.stderr
    assert "Traceback" not in done.stderr
    assert last.read_bytes() == before, "the previous checkpoint must survive a failed write"
    assert not list(last.parent.glob(".*.tmp")), "a failed write must not leave its temporary file"
    filler.unlink()
    _run(data_dir, out)
    _assert_same_result(reference, out, "after disk full")


CACHED = ["--set", "augment.mixup_alpha=0", "--set", "phase1.epochs=4", "--set", "phase1.cache_views=2"]


def test_phase1_on_cached_features_resumes_to_the_same_result(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log = subprocess.run([sys.executable, "-m", "training", *_args(data_dir, straight, *CACHED)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stderr
    assert '"msg": "feature cache built"' in log
    code = _kill_after([sys.executable, "-m", "training", *_args(data_dir, killed, *CACHED)],
                       '"phase": 1, "epoch": 2,', 0.05, signal.SIGTERM)
    assert code in (0, 75)
    log = subprocess.run([sys.executable, "-m", "training", *_args(data_dir, killed, *CACHED)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stderr
    assert '"msg": "feature cache loaded"' in log, "the resumed run must reuse the saved cache"
    _assert_same_result(_final(straight), killed, "cached phase 1")
