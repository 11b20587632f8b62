"""The training job with data.path and artifacts_dir in an object store (training.object_store), against a real
S3-protocol server on 127.0.0.1 (tests/s3server.py): it trains from the bucket and publishes into it (LATEST last),
a second pass downloads nothing, a changed object is downloaded again and makes the run identity refuse to resume,
and a missing bucket or wrong credentials end in one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import QUICK
from helpers import ROOT, run_batch
from s3server import client

pytestmark = pytest.mark.slow
PER_CLASS = 12  # images per class and split uploaded: enough for every split, quick to train on


def training(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def mirror_counts(stderr: str) -> dict:
    (done,) = [e for e in events(stderr) if e["msg"].startswith("data s3://")]
    return {k: done[k] for k in ("downloaded", "reused", "removed")}


@pytest.fixture(scope="module")
def bucket(s3, data_dir):
    c = client(s3)
    c.create_bucket(Bucket="training")
    keys = []
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            for photo in sorted((data_dir / split / cls).glob("*.jpg"))[:PER_CLASS]:
                keys.append(f"bees/{split}/{cls}/{photo.name}")
                c.upload_file(str(photo), "training", keys[-1])
    return keys


def sets(tmp_path, **extra: str) -> list[str]:
    pairs = {"data.path": "s3://training/bees", "output_dir": str(tmp_path / "run"), "name": "bees",
             "artifacts_dir": "s3://training/artifacts",
             "export.majority_significance": "1", **extra}  # 48 photos train too little to pass the gate
    return [a for item in QUICK + [f"{k}={v}" for k, v in pairs.items()] for a in ("--set", item)]


def test_trains_from_a_bucket_and_publishes_into_it(s3, bucket, tmp_path):
    done = training(s3, "train", *sets(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert mirror_counts(done.stderr) == {"downloaded": len(bucket), "reused": 0, "removed": 0}
    c = client(s3)
    version = c.get_object(Bucket="training", Key="artifacts/bees/LATEST")["Body"].read().decode().strip()
    stored = {o["Key"] for o in c.list_objects_v2(Bucket="training", Prefix=f"artifacts/bees/{version}/")["Contents"]}
    local = tmp_path / "run" / "artifacts_upload" / "bees" / version
    assert stored == {f"artifacts/bees/{version}/{p.relative_to(local).as_posix()}"
                      for p in local.rglob("*") if p.is_file()}
    card = json.loads(c.get_object(Bucket="training", Key=f"artifacts/bees/{version}/model.json")["Body"].read())
    assert card["version"] == version and card["classes"] == ["ants", "bees"]
    assert f"published s3://training/artifacts/bees/{version}" in done.stdout

    # the batch job scores from the same bucket with the model it published there, fetched through LATEST
    scored = run_batch("--model", "s3://training/artifacts/bees", "--model-cache", str(tmp_path / "models"),
                       "--input", "s3://training/bees/val", "--output", str(tmp_path / "scored"),
                       "--precision", "fp32", env=s3)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models" / "bees" / version).iterdir()) == sorted(
        p.name for p in local.iterdir())
    rows = [r for p in sorted((tmp_path / "scored").glob("part-*")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 2 * PER_CLASS and {r["version"] for r in rows} == {version}

    # the same data again: nothing downloaded, and the run directory is recognised as the same run
    again = training(s3, "inspect", "s3://training/bees", "--set",
                     f"output_dir={tmp_path / 'run'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert mirror_counts(again.stderr) == {"downloaded": 0, "reused": len(bucket), "removed": 0}

    # one photo replaced by another's bytes, one removed: both reach the mirror, and the run will not resume
    c.copy_object(Bucket="training", Key=bucket[0], CopySource={"Bucket": "training", "Key": bucket[1]})
    c.delete_object(Bucket="training", Key=bucket[2])
    changed = training(s3, "train", *sets(tmp_path))
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert mirror_counts(changed.stderr) == {"downloaded": 1, "reused": len(bucket) - 2, "removed": 1}
    assert "other images, labels or split" in changed.stderr and "Traceback" not in changed.stderr
    mirrored = tmp_path / "run" / "data_mirror" / "s3" / "training" / "bees"
    assert (mirrored / bucket[0].split("/", 1)[1]).read_bytes() == (mirrored / bucket[1].split("/", 1)[1]).read_bytes()
    assert not (mirrored / bucket[2].split("/", 1)[1]).exists()

    # a whole class gone from the bucket leaves no empty class folder behind
    for key in [k for k in bucket if k.startswith("bees/val/bees/")]:
        c.delete_object(Bucket="training", Key=key)
    inspected = training(s3, "inspect", "s3://training/bees", "--set", f"output_dir={tmp_path / 'run'}")
    assert mirror_counts(inspected.stderr)["removed"] == PER_CLASS, inspected.stderr[-2000:]
    assert not (mirrored / "val" / "bees").exists()


def test_a_missing_bucket_and_wrong_credentials_are_one_clear_line(s3, bucket, tmp_path):
    missing = training(s3, "inspect", "s3://no-such-bucket/data", "--set", f"output_dir={tmp_path}")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert "s3://no-such-bucket/data" in missing.stderr and "no such bucket" in missing.stderr
    wrong = training({**s3, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "inspect", "s3://training/bees",
                     "--set", f"output_dir={tmp_path}")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert "access denied" in wrong.stderr and "AWS_ACCESS_KEY_ID" in wrong.stderr
