"""Hostile datasets (issue 27): every file costs the intake a bounded amount, opens only what it should, and is trained
on or listed with the reason; a dataset the job cannot use stops with a message, never a traceback or a hang."""
from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.model_selection import train_test_split

from contract.card import MAX_CLASS_NAME_CHARS
from training import data_report
from training.config import DataConfig, ManifestConfig
from training.data import ClassPolicy, DataError, _carve, load_splits
from training.image_files import FileLimits, inspect

ROOT = Path(__file__).resolve().parents[2]


def _photos(root: Path, data_dir: Path, n: int = 6) -> None:
    for name in ("ants", "bees"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((data_dir / "train" / name).glob("*.jpg"))[:n]:
            shutil.copy(p, root / name / p.name)


def png_bomb(path: Path, width: int, height: int) -> int:
    """A valid greyscale PNG of width x height zeros, written row by row (the test never holds its pixels): a few
    hundred kilobytes that decode to width x height bytes. Returns the file's size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    body = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    path.write_bytes(body)
    return len(body)


def _skipped(splits) -> dict[str, str]:
    return {Path(p).name: reason for p, reason in splits.skipped}


def test_decompression_bomb_is_skipped_from_its_header_and_costs_no_memory(tmp_path, data_dir):
    """A 300 KB PNG of 10000 x 10000 pixels (100 MP, under PIL's own bomb error) in a class folder: before, the
    intake decoded it (the issue's 30000 x 30000 took the job from 1.45 to 8.8 GB) and it was trained on."""
    root = tmp_path / "ds"
    _photos(root, data_dir)
    png_bomb(root / "ants" / "bomb.png", 10_000, 10_000)
    script = (f"import resource, json; from training.config import DataConfig; from training.data import load_splits; "
              f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              f"s = load_splits(DataConfig(path={str(root)!r}, val_ratio=0.25, test_ratio=0.25), seed=0); "
              f"print(json.dumps({{'skipped': s.skipped, 'grew_mb': (resource.getrusage(resource.RUSAGE_SELF)"
              f".ru_maxrss - before) / 1024}}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    reasons = {Path(p).name: r for p, r in result["skipped"]}
    assert "10000x10000 = 100000000 pixels, over data.max_image_pixels" in reasons["bomb.png"]
    assert result["grew_mb"] < 150, f"the intake's peak memory grew {result['grew_mb']:.0f} MB"


def test_pixel_and_byte_caps_are_settings(tmp_path, data_dir):
    root = tmp_path / "ds"
    _photos(root, data_dir)
    big = max((p for p in root.rglob("*.jpg")), key=lambda p: p.stat().st_size)
    cfg = DataConfig(path=root, val_ratio=0.25, test_ratio=0.25, max_file_bytes=big.stat().st_size - 1)
    assert _skipped(load_splits(cfg, seed=0)) == {big.name: f"{big.stat().st_size} bytes, over data.max_file_bytes "
                                                            f"({big.stat().st_size - 1})"}
    with Image.open(big) as im:
        w, h = im.size
    info, reason = inspect(big, FileLimits(max_bytes=1 << 30, max_pixels=w * h - 1))
    assert info is None and reason.startswith(f"{w}x{h} = {w * h} pixels, over data.max_image_pixels")
    assert inspect(big, FileLimits(max_bytes=1 << 30, max_pixels=w * h))[0] is not None


def _manifest(tmp_path: Path, data_dir: Path, extra_rows: list[tuple[str, str]]) -> Path:
    root = tmp_path / "ds"
    _photos(root / "images", data_dir)
    rows = [(f"images/{p.parent.name}/{p.name}", p.parent.name) for p in sorted((root / "images").rglob("*.jpg"))]
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows + extra_rows)
    return root / "labels.csv"


@pytest.mark.parametrize("row", ["/dev/zero", "../outside.jpg", "images/../../outside.jpg", "/etc/hostname"])
def test_manifest_rows_outside_the_dataset_folder_stop_the_job_naming_them(tmp_path, data_dir, row):
    (tmp_path / "outside.jpg").write_bytes(next((data_dir / "val" / "ants").glob("*.jpg")).read_bytes())
    manifest = _manifest(tmp_path, data_dir, [(row, "ants")])
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=manifest, val_ratio=0.25, test_ratio=0.25), seed=0)
    assert "line 14" in str(err.value) and row in str(err.value) and "data.allow_outside_paths=true" in str(err.value)


def test_only_regular_files_are_opened_even_where_outside_paths_are_allowed(tmp_path, data_dir):
    """/dev/zero grew the job to 4.3 GB in 5 s and a named pipe hung it with no output; both are listed instead."""
    manifest = _manifest(tmp_path, data_dir, [("/dev/zero", "ants"), ("images/pipe.jpg", "bees"),
                                              ("images", "bees"), ("images/missing.jpg", "ants")])
    os.mkfifo(manifest.parent / "images" / "pipe.jpg")
    splits = load_splits(DataConfig(path=manifest, val_ratio=0.25, test_ratio=0.25, allow_outside_paths=True), seed=0)
    skipped = _skipped(splits)
    assert "not a regular file" in skipped["zero"] and "not a regular file" in skipped["pipe.jpg"]
    assert "a folder" in skipped["images"] and "cannot be read" in skipped["missing.jpg"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12


def test_folder_entries_that_are_not_images_are_listed_with_the_reason(tmp_path, data_dir):
    root = tmp_path / "ds"
    _photos(root, data_dir)
    (root / "ants" / "folder.jpg").mkdir()
    (root / "ants" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "bees" / "loop.jpg").symlink_to(root / "bees" / "loop.jpg")
    (root / "bees" / "link-to-nothing").symlink_to(tmp_path / "nothing")
    skipped = _skipped(load_splits(DataConfig(path=root, val_ratio=0.25, test_ratio=0.25), seed=0))
    assert "a folder" in skipped["folder.jpg"]
    assert "broken or looping symbolic link" in skipped["dangling.jpg"]
    assert "broken or looping symbolic link" in skipped["loop.jpg"]
    assert "broken or looping symbolic link" in skipped["link-to-nothing"]


def test_control_characters_in_class_names_stop_the_job_at_intake(tmp_path, data_dir):
    root = tmp_path / "ds"
    _photos(root, data_dir)
    shutil.move(root / "bees", root / "be\nes")
    with pytest.raises(DataError, match="control characters"):
        load_splits(DataConfig(path=root, val_ratio=0.25, test_ratio=0.25), seed=0)


def test_a_class_name_longer_than_a_folder_name_stops_the_job_at_intake(tmp_path, data_dir):
    """A CSV column can hold what no folder can: a class name the service could not take back (/explain's label,
    /feedback) is refused before training, with the rule."""
    def manifest(root: Path, bees: str) -> Path:
        _photos(root / "images", data_dir)
        rows = [(f"images/{p.parent.name}/{p.name}", bees if p.parent.name == "bees" else p.parent.name)
                for p in sorted((root / "images").rglob("*.jpg"))]
        with (root / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *rows])
        return root / "labels.csv"

    long = "b" * (MAX_CLASS_NAME_CHARS + 1)
    with pytest.raises(DataError, match=f"longer than {MAX_CLASS_NAME_CHARS} characters"):
        load_splits(DataConfig(path=manifest(tmp_path / "long", long), val_ratio=0.25, test_ratio=0.25), seed=0)
    splits = load_splits(DataConfig(path=manifest(tmp_path / "ok", long[:-1]), val_ratio=0.25, test_ratio=0.25), seed=0)
    assert long[:-1] in splits.classes


def test_file_names_with_newlines_and_tabs_reach_the_skew_gate_scorer(tmp_path, artifact, data_dir):
    """The skew gate handed the scorer tab-separated lines: a newline in a file name failed the job after training."""
    odd = tmp_path / "an\nant\twith tabs.jpg"
    shutil.copy(next((data_dir / "val" / "ants").glob("*.jpg")), odd)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"path": str(odd), "label": 0}) + "\n")
    out = subprocess.run([sys.executable, "-m", "serving.score", "--model", str(artifact), "--labels", str(labels)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["n"] == 1


def test_copies_are_grouped_so_the_report_grows_with_images_not_pairs(tmp_path, data_dir):
    """2 images as 4,000 manifest rows: 2 million pairs and 1.5 GB before; now 2 groups per split pair."""
    root = tmp_path / "ds"
    _photos(root / "images", data_dir, n=1)
    files = sorted((root / "images").rglob("*.jpg"))
    with (root / "labels.csv").open("w", newline="") as f:  # the team's own split puts copies on every side
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows((f"images/{p.parent.name}/{p.name}", p.parent.name, ("train", "val", "test")[k % 3])
                    for k in range(2000) for p in files)
    splits = load_splits(DataConfig(path=root / "labels.csv", manifest=ManifestConfig(split_column="split")), seed=0)
    with pytest.raises(DataError, match="every one of the 1332 test images has a copy in the training split"):
        data_report.prepare(splits, "warn", 4, 64)  # a test split of copies measures memory: refused
    report = data_report.build(splits, data_report.find_duplicates(splits, 4), 0, "warn", 64)
    dup = report["duplicates"]
    assert dup["exact"] == 6 and dup["near"] == 0  # 2 images x 3 split pairs
    train_test = dup["by_splits"]["train-test"]
    assert train_test["train_images"] == len(splits.train) and train_test["test_images"] == len(splits.test)
    group = next(g for g in dup["groups"] if g["splits"] == "train-test")
    assert len(group["train_files"]) == data_report.MAX_NAMES and group["train_count"] > 500
    assert len(json.dumps(report)) < 100_000


MANIFEST_PATHS = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["..", ".", "images", "ants", "/", "/dev", "null", "zero", "~", "x.jpg", "\n", "\t",
                              "\x00", " ", "images/ants", "C:\\", "%2e%2e", "…"]), max_size=8).map("/".join))


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=MANIFEST_PATHS, label=st.text(max_size=12))
def test_fuzz_manifest_rows_never_escape_hang_or_crash(tmp_path, data_dir, path, label):
    """Any path string and label in a manifest row: the row trains, is listed as skipped, or the job stops with a
    DataError; a file outside the folder is never opened."""
    root = tmp_path / "fuzz"
    if not root.exists():
        _photos(root / "images", data_dir, n=4)
    rows = [(f"images/{p.parent.name}/{p.name}", p.parent.name) for p in sorted((root / "images").rglob("*.jpg"))]
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows, (path, label or "ants")])
    try:
        splits = load_splits(DataConfig(path=root / "labels.csv", val_ratio=0.25, test_ratio=0.25), seed=0)
    except DataError:
        return
    inside = os.path.abspath(root)
    for part in splits.parts().values():
        assert all(os.path.abspath(p).startswith(inside + os.sep) for p in part.paths)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_the_product_carves_keep_copies_on_one_side(tmp_path, data_dir, seed):
    """Issue 29: a random split of class folders put 19 exact copies on both sides of train/test. Copies now move
    as a group; a dataset without copies splits exactly as the plain stratified split did."""
    root = tmp_path / "ds"
    _photos(root, data_dir, n=10)
    for i, original in enumerate(sorted((root / "ants").iterdir())[:4]):
        for k in range(3):
            shutil.copy(original, root / "ants" / f"copy{i}-{k}.jpg")
    splits = load_splits(DataConfig(path=root), seed=seed)
    _, report = data_report.prepare(splits, "warn", 0, 64)
    assert all(counts["exact_groups"] == 0 for counts in report["duplicates"]["by_splits"].values()), \
        report["duplicates"]["by_splits"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 32


def test_without_copies_the_carve_is_the_plain_stratified_split(tmp_path, data_dir):
    """Runs recorded before copies were grouped resume: with no copies, the same images land in the same splits."""
    root = tmp_path / "ds"
    _photos(root, data_dir, n=10)
    images = load_splits(DataConfig(path=root, val_ratio=0.25, test_ratio=0.25), seed=0).train
    for seed in range(3):
        a, b = train_test_split(np.arange(len(images)), test_size=0.3, random_state=seed, stratify=images.labels)
        got = _carve(images, 0.3, seed, "test", ClassPolicy("error"))
        assert [list(part.paths) for part in got] == [[images.paths[i] for i in sorted(idx)] for idx in (a, b)]
