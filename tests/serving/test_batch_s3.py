"""`python -m serving.batch` against a real S3-protocol server (moto's standalone server, started here on 127.0.0.1
with credentials checked): an archive in a bucket scored into parts in another prefix, equal to the same archive
scored from a folder (a file over --max-image-bytes, an empty one and a broken one as rows with their reasons); a
listing of thousands of keys; a missing bucket and wrong credentials as clear errors."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, run_batch
from PIL import Image
from s3server import client

pytestmark = pytest.mark.slow


def batch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_batch(*args, env=env)


def s3_rows(env: dict, bucket: str, prefix: str) -> list[dict]:
    c = client(env)
    keys = sorted(o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
                  if o["Key"].rsplit("/", 1)[1].startswith("part-"))
    return [r for k in keys for r in pq.read_table(io.BytesIO(c.get_object(Bucket=bucket, Key=k)["Body"].read()))
            .to_pylist()]


def test_an_archive_in_a_bucket_is_scored_into_the_bucket(s3, artifact, data_dir, tmp_path):
    folder = tmp_path / "archive"
    (folder / "bees").mkdir(parents=True)
    for photo in sorted((data_dir / "val" / "bees").glob("*.jpg"))[:5]:
        shutil.copy(photo, folder / "bees" / photo.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "empty.jpg").write_bytes(b"")  # a ranged read of an empty object: S3 answers 416, not the empty file
    limit = max(f.stat().st_size for f in folder.rglob("*.*")) + 1
    (folder / "huge.jpg").write_bytes(photo.read_bytes() + bytes(2 * limit))  # a JPEG with trailing bytes
    c = client(s3)
    c.create_bucket(Bucket="photos")
    for f in sorted(folder.rglob("*.*")):
        c.upload_file(str(f), "photos", f"archive/{f.relative_to(folder).as_posix()}")
    common = ["--model", str(artifact), "--precision", "fp32", "--part-size", "2", "--max-image-bytes", str(limit)]
    remote = batch(s3, *common, "--input", "s3://photos/archive", "--output", "s3://photos/scored/run1")
    assert remote.returncode == 0, remote.stderr
    local = batch({}, *common, "--input", str(folder), "--output", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    rows = s3_rows(s3, "photos", "scored/run1/")
    assert rows == [r for p in sorted((tmp_path / "local").glob("part-*")) for r in pq.read_table(p).to_pylist()]
    assert {r["path"]: r["error"] for r in rows if r["error"]} == {
        "broken.png": "not_an_image", "empty.jpg": "empty", "huge.jpg": "file_too_large"}
    summary = json.loads(c.get_object(Bucket="photos", Key="scored/run1/summary.json")["Body"].read())
    assert summary["images"] == 8 and summary["scored"] == 5
    again = batch(s3, *common, "--input", "s3://photos/archive", "--output", "s3://photos/scored/run1")
    assert again.returncode == 0 and '"already_done": 8' in again.stderr, "a restart skips the parts in the bucket"


def test_a_listing_of_thousands_of_keys(s3, artifact, tmp_path):
    """2,500 keys: S3 lists 1,000 a page; every one is listed, scored and counted."""
    c = client(s3)
    c.create_bucket(Bucket="many")
    blobs = []
    for shade in (40, 200):
        out = io.BytesIO()
        Image.new("RGB", (16, 16), (shade, shade // 2, 255 - shade)).save(out, "PNG")
        blobs.append(out.getvalue())
    with ThreadPoolExecutor(8) as pool:  # boto3 clients are thread-safe; 0.8x the time of one put at a time
        list(pool.map(lambda i: c.put_object(Bucket="many", Key=f"in/{i // 500}/{i:05d}.png", Body=blobs[i % 2]),
                      range(2500)))
    done = batch(s3, "--model", str(artifact), "--precision", "fp32", "--input", "s3://many/in",
                 "--output", "s3://many/out", "--part-size", "1000", "--batch-size", "64")
    assert done.returncode == 0, done.stderr
    summary = json.loads(c.get_object(Bucket="many", Key="out/summary.json")["Body"].read())
    assert summary["images"] == summary["scored"] == 2500 and summary["parts"] == 3


def test_a_missing_bucket_and_wrong_credentials_are_clear_errors(s3, artifact, tmp_path):
    common = ["--model", str(artifact), "--output", str(tmp_path / "out")]
    missing = batch(s3, *common, "--input", "s3://no-such-bucket/photos")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert "s3://no-such-bucket/photos" in missing.stderr and "does not exist" in missing.stderr
    client(s3).create_bucket(Bucket="guarded")
    client(s3).put_object(Bucket="guarded", Key="in/a.png", Body=b"x")
    wrong = batch({**s3, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, *common, "--input", "s3://guarded/in")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    assert "access denied" in wrong.stderr and "AWS_ACCESS_KEY_ID" in wrong.stderr
    unwritable = batch({**s3, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "--model", str(artifact),
                       "--input", str(Path(ROOT / ".." / "shared" / "data" / "hymenoptera_data" / "val" / "ants")),
                       "--output", "s3://guarded/out")
    assert unwritable.returncode == 2 and "access denied" in unwritable.stderr, unwritable.stderr
