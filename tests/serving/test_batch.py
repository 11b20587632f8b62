"""`python -m serving.batch` as a user runs it (a subprocess), on real photos: Parquet parts whose answers equal the
real service's /predict for the same bytes, unreadable files as rows with their reason, shards that add up to the
whole, a restart that redoes only what is missing, and the clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from helpers import run_batch as batch
from helpers import running_server

from contract.files import sha256_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(data_dir, tmp_path_factory) -> Path:
    """11 real photos in two levels of folders, a truncated JPEG, a text file, a hidden file."""
    root = tmp_path_factory.mktemp("archive")
    for i, photo in enumerate(sorted((data_dir / "val" / "ants").glob("*.jpg"))[:5]):
        shutil.copy(photo, root / f"a{i}.jpg")
    (root / "deeper" / "still").mkdir(parents=True)
    for i, photo in enumerate(sorted((data_dir / "val" / "bees").glob("*.jpg"))[:6]):
        shutil.copy(photo, root / ("deeper/still" if i % 2 else "deeper") / f"b{i}.JPG")
    (root / "broken.jpg").write_bytes(photo.read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def events(done: subprocess.CompletedProcess) -> list[dict]:
    """The progress lines of a run without a terminal (a pod's log)."""
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"ts"')]


def rows_of(output: Path) -> list[dict]:
    return [r for p in sorted(output.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_parts_answer_as_predict_does(artifact, archive, tmp_path):
    out = tmp_path / "out"
    done = batch("--model", str(artifact.parent), "--input", str(archive), "--output", str(out), "--part-size", "5",
                 "--top-k", "2", "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{k:06d}.parquet" for k in range(3)]
    rows = rows_of(out)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert len(rows) == 12 and {r["path"] for r in rows} >= {"broken.jpg", "deeper/b0.JPG", "deeper/still/b1.JPG"}
    broken = next(r for r in rows if r["path"] == "broken.jpg")
    assert broken["error"] and broken["label"] is None and broken["error_message"]
    assert broken["sha256"] == sha256_of(archive / "broken.jpg")
    with running_server({"SERVING_MODEL_DIR": str(artifact), "SERVING_PRECISION": "fp32"},
                        tmp_path / "serve.log") as srv:
        for r in rows:
            answer = httpx.post(srv.url + "/predict", files={"image": (archive / r["path"]).open("rb")},
                                data={"top_k": "2"}, timeout=60).json()
            if r["error"] is not None:  # the service's refusal of the same bytes, with the same reason
                assert (r["error"], r["error_message"]) == (answer["error"], answer["message"])
                continue
            assert r["label"] == answer["label"] and r["version"] == answer["version"]
            assert r["confidence"] == pytest.approx(answer["confidence"], abs=1e-6)
            assert r["top_k_labels"] == [t["label"] for t in answer["top_k"]]
            assert r["sha256"] == sha256_of(archive / r["path"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 12 and summary["scored"] == 11
    assert summary["unreadable_by_reason"] == {broken["error"]: 1}
    assert summary["not_image_names"] == 1  # notes.txt; the hidden file is not listed at all
    labels = [r["label"] for r in rows if r["error"] is None]
    assert summary["class_shares"] == {c: pytest.approx(labels.count(c) / 11) for c in set(labels)}
    assert set(summary["estimated_accuracy"]) == {"atc_mc", "atc_ne"}
    assert all(0 <= v <= 1 for v in summary["estimated_accuracy"].values())
    assert json.loads(done.stdout)["scored"] == 11
    assert [e["event"] for e in events(done)] == ["start", "part", "part", "part"], "a pod's log: JSON lines"


def test_shards_add_up_and_the_last_one_summarizes(artifact, archive, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--model", str(artifact), "--input", str(archive), "--part-size", "3", "--precision", "fp32"]
    assert batch(*common, "--output", str(whole)).returncode == 0
    first = batch(*common, "--output", str(split), "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in split.glob("part-*")) == ["part-000000.parquet", "part-000002.parquet"]
    assert not (split / "summary.json").exists(), "parts 1 and 3 are missing: no summary yet"
    second = batch(*common, "--output", str(split), "--shards", "2", env={"JOB_COMPLETION_INDEX": "1"})
    assert second.returncode == 0, second.stderr
    assert rows_of(split) == rows_of(whole)
    assert json.loads((split / "summary.json").read_text())["scored"] == \
        json.loads((whole / "summary.json").read_text())["scored"] == 11


def test_a_restart_redoes_only_the_missing_parts(artifact, archive, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(artifact), "--input", str(archive), "--output", str(out), "--part-size", "4",
            "--precision", "fp32"]
    assert batch(*args).returncode == 0
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    (out / "part-000001.parquet").unlink()  # the pod died while writing it: only a temporary file was there
    (out / ".part-000001.parquet.123.tmp").write_bytes(b"half")
    (out / "summary.json").unlink()
    again = batch(*args)
    assert again.returncode == 0, again.stderr
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    assert set(now) == set(kept) and all(now[k] == kept[k] for k in kept if k != "part-000001.parquet")
    start = next(e for e in events(again) if e["event"] == "start")
    assert start["already_done"] == 8 and start["images"] == 12
    assert json.loads((out / "summary.json").read_text())["images"] == 12


def test_csv_manifests_and_clear_errors(artifact, archive, tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,note\n" + "".join(f"{archive / n},x\n" for n in ("a0.jpg", "deeper/b0.JPG")))
    out = tmp_path / "csv"
    done = batch("--model", str(artifact), "--input", str(manifest), "--output", str(out), "--path-column", "file",
                 "--allow-outside-paths")
    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in rows_of(out)] == sorted([str(archive / "a0.jpg"), str(archive / "deeper/b0.JPG")])
    # a manifest beside the photos, its paths built from an id column (training's data.manifest.path_template)
    by_id = tmp_path / "by-id"
    (by_id / "deeper").mkdir(parents=True)
    shutil.copy(archive / "deeper" / "b0.JPG", by_id / "deeper" / "b0.JPG")
    (by_id / "ids.csv").write_text("id,label\na0,x\nb0,y\n")
    built = batch("--model", str(artifact), "--input", str(by_id / "ids.csv"), "--output", str(tmp_path / "ids"),
                  "--path-template", "deeper/{id}.JPG")
    assert built.returncode == 0, built.stderr
    rows = rows_of(tmp_path / "ids")
    assert [r["path"] for r in rows] == ["deeper/a0.JPG", "deeper/b0.JPG"]
    assert rows[0]["error"] is not None and rows[1]["error"] is None, "a missing file is a row with its reason"
    cases = {
        "outside the CSV's folder": ["--input", str(manifest), "--output", str(tmp_path / "x"), "--path-column",
                                     "file"],
        "names the column 'name'": ["--input", str(manifest), "--output", str(tmp_path / "x"), "--path-template",
                                    "{name}.jpg"],
        "no column 'path'": ["--input", str(manifest), "--output", str(tmp_path / "x")],
        "does not exist": ["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")],
        "another job": ["--input", str(archive), "--output", str(out)],  # out holds the CSV job's parts
        "i/n": ["--input", str(archive), "--output", str(tmp_path / "y"), "--shard", "two"],
        "JOB_COMPLETION_INDEX": ["--input", str(archive), "--output", str(tmp_path / "y"), "--shards", "3"],
    }
    for words, args in cases.items():
        failed = batch("--model", str(artifact), *args)
        assert failed.returncode == 2 and words in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    missing = batch("--model", str(tmp_path / "no-model"), "--input", str(archive), "--output", str(tmp_path / "z"))
    assert missing.returncode == 2 and "--model" in missing.stderr and "Traceback" not in missing.stderr
