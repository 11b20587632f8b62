import pickle

import numpy as np
import pytest
from helpers import copy_images
from PIL import Image

from training.config import DataConfig
from training.data import DataError, load_splits
from training.optim import class_weights


def _folder(tmp_path, data_dir, ants=12, bees=8):
    root = tmp_path / "ds"
    copy_images(data_dir / "train" / "ants", root / "ants", ants)
    copy_images(data_dir / "train" / "bees", root / "bees", bees)
    return root


def test_folder_split_is_stratified_and_corrupt_files_are_reported(tmp_path, data_dir):
    root = _folder(tmp_path, data_dir, 20, 20)
    good = (root / "ants").iterdir().__next__().read_bytes()
    (root / "ants" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "bees" / "text.jpg").write_text("not an image")
    (root / "bees" / "notes.txt").write_text("stray file")
    s = load_splits(DataConfig(path=root, val_ratio=0.2, test_ratio=0.25), seed=0)
    skipped = {p.split("/")[-1] for p, _ in s.skipped}
    assert skipped == {"truncated.jpg", "text.jpg", "notes.txt"}
    assert len(s.train) + len(s.val) + len(s.test) == 40
    assert s.test.counts() == [5, 5] and s.val.counts() == [4, 4]  # ratios are of the whole dataset


def test_split_folders_use_val_as_test(data_dir):
    s = load_splits(DataConfig(path=data_dir), seed=0)
    assert s.classes == ["ants", "bees"]
    assert s.test.counts() == [70, 83]          # hymenoptera's val/ is the test split
    assert len(s.train) + len(s.val) == 244     # 245 files in train/, one is a GIF placeholder
    assert any(p.endswith("imageNotFound.gif") for p, _ in s.skipped)


def test_empty_single_missing(tmp_path, data_dir):
    root = _folder(tmp_path, data_dir)
    (root / "wasps").mkdir()  # a folder without images is not a class: left out, and the reading says so
    s = load_splits(DataConfig(path=root), seed=0)
    assert s.classes == ["ants", "bees"] and any("wasps/" in n and "no images" in n for n in s.notes)
    (root / "wasps" / "broken.jpg").write_text("not an image")  # named like images: a class whose files fail
    with pytest.raises(DataError, match="wasps"):
        load_splits(DataConfig(path=root), seed=0)
    import shutil
    shutil.rmtree(root / "wasps")
    shutil.rmtree(root / "bees")
    with pytest.raises(DataError, match="only one class"):
        load_splits(DataConfig(path=root), seed=0)
    with pytest.raises(DataError, match="not found"):
        load_splits(DataConfig(path=tmp_path / "nope"), seed=0)


def test_csv_manifest(tmp_path, data_dir):
    root = _folder(tmp_path, data_dir, 10, 10)
    rows = ["path,label"] + [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(root.rglob("*.jpg"))]
    (root / "manifest.csv").write_text("\n".join(rows))
    s = load_splits(DataConfig(path=root / "manifest.csv", val_ratio=0.2, test_ratio=0.2), seed=1)
    assert s.classes == ["ants", "bees"] and len(s.train) + len(s.val) + len(s.test) == 20


def test_cifar10_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(10)]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    for name, n in [("data_batch_1", 100), ("test_batch", 40)]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         "labels": [i % 10 for i in range(n)]}, f)
    s = load_splits(DataConfig(path=tmp_path), seed=0)
    assert s.classes == names and len(s.test) == 40 and len(s.train) + len(s.val) == 100
    assert s.train.image(0).size == (32, 32) and isinstance(s.train.image(0), Image.Image)


def test_class_weights_follow_counts():
    w = class_weights([30, 10])
    assert w.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
