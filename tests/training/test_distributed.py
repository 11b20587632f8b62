"""torchrun with 2 gloo processes on CPU: disjoint shards, equal final weights, accuracy like one process."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from training.loader import EpochSampler

ARGS = ["--set", "data.image_size=64", "--set", "data.resize_size=72", "--set", "data.limit_per_class=40",
        "--set", "data.num_workers=0", "--set", "model.backbone=efficientnet_lite0", "--set", "phase1.epochs=4",
        "--set", "phase2.epochs=2", "--set", "threads=1", "--set", "export.enabled=false",
        "--set", "early_stop.patience=9"]


def test_shards_are_disjoint_and_reshuffled_per_epoch():
    shards = []
    for rank in (0, 1):
        s = EpochSampler(50, seed=3, batch_size=4, rank=rank, world=2)
        s.set_epoch(0)
        shards.append([i for i, _ in s])
    assert len(shards[0]) == len(shards[1]) == 24 and not set(shards[0]) & set(shards[1])
    s = EpochSampler(50, seed=3, batch_size=4, rank=0, world=2)
    s.set_epoch(1)
    assert [i for i, _ in s] != shards[0]


def _torchrun(data_dir, out, extra=(), restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", str(restarts),
            "-m", "training", "train", "--set", f"data.path={data_dir}", "--set", f"output_dir={out}",
            "--set", "data.batch_size=8", *ARGS, *extra]


def _result(out):
    return json.loads((out / "final" / "result.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("ddp")
    run = subprocess.run(_torchrun(data_dir, out), cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return _result(out)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, data_dir, ddp_run):
    ddp = ddp_run
    assert ddp["world_size"] == 2 and len(set(ddp["weights_sha256_per_rank"])) == 1
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "training", "train", "--set", f"data.path={data_dir}",
                    "--set", f"output_dir={single}", "--set", "data.batch_size=16", *ARGS],
                   cwd=ROOT, check=True, capture_output=True)
    # same global batch (2 x 8 vs 16); linear LR scaling keeps the per-sample rate; 80 test photos
    assert abs(ddp["test_accuracy"] - _result(single)["test_accuracy"]) <= 0.1, (ddp["test_accuracy"],
                                                                                  _result(single)["test_accuracy"])


@pytest.mark.slow
def test_killed_rank_then_restart_resumes_to_the_same_result(tmp_path, data_dir, ddp_run):
    """SIGKILL one rank mid-run (a node lost): the run fails as a whole; restarted, as the Job or the PyTorchJob
    operator restarts it, every rank resumes from the last complete checkpoint and the result equals the
    uninterrupted run's."""
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    proc = subprocess.Popen(_torchrun(data_dir, tmp_path), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    pids, target = {}, f'"phase": 1, "epoch": {rng.randint(1, 3)},'
    for line in proc.stderr:
        if '"msg": "process"' in line:
            row = json.loads(line)
            pids[row["rank"]] = row["pid"]
        if target in line:
            time.sleep(rng.uniform(0, 0.5))
            os.kill(pids[1], signal.SIGKILL)
            break
    proc.stderr.read()
    assert proc.wait(180) != 0, "losing a rank must fail the run (the Job or operator restarts it)"
    assert not (tmp_path / "final").exists()
    restart = subprocess.run(_torchrun(data_dir, tmp_path), cwd=ROOT, capture_output=True, text=True)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert restart.stderr.count('"msg": "resumed"') == 1  # rank 0 logs for all
    resumed = _result(tmp_path)
    assert resumed["weights_sha256_per_rank"] == ddp_run["weights_sha256_per_rank"], f"KILL_SEED={seed}"
    assert resumed["test_accuracy"] == ddp_run["test_accuracy"]
