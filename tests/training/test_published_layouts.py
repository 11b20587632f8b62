"""Issue 29: datasets laid out the way their owners publish them, built from the real photos in ../shared/data.

Each test is one pattern met on a public dataset: the first run reads the right classes, leaves out the rest with a
note, or stops at once with the readings it could take and the exact command for each, which then works."""
import random
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from helpers import ROOT
from PIL import Image

from training.config import DataConfig, load_config
from training.data import DataError, load_splits
from training.demo import dataset_name
from training.inspect_data import describe


def _photos(dst, data_dir, n=10, split="train", start=0):
    """n real photos per class (ants, bees) under dst/<class>/."""
    for name in ("ants", "bees"):
        (dst / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((data_dir / split / name).glob("*.jpg"))[start:start + n]:
            shutil.copy(p, dst / name / p.name)


def _mask_of(photo, dst):
    """A segmentation mask as published beside a photo: single-channel PNG of 0 and 255 with the photo's stem."""
    with Image.open(photo) as im:
        im.convert("L").point(lambda v: 255 if v > 110 else 0).save(dst)


def _set_path_from(message: str, line: int) -> str:
    """The `--set data.path=...` of the given numbered reading in an error message, as the shell would pass it."""
    found = re.search(rf"^\s*{line}\. .*?(--set .*)$", message, re.M)
    return shlex.split(found.group(1))[1].split("=", 1)[1]


def test_class_folder_holding_one_folder_of_images_with_masks_beside_them(tmp_path, data_dir):
    root = tmp_path / "lesions"
    _photos(root, data_dir)
    for cls in ("ants", "bees"):
        (root / cls / "Imgs").mkdir()
        for k, p in enumerate(sorted((root / cls).glob("*.jpg"))):
            p.rename(root / cls / "Imgs" / p.name)
            mask = p.with_suffix(".png").name if k % 2 else p.stem + "_mask.png"
            _mask_of(root / cls / "Imgs" / p.name, root / cls / "Imgs" / mask)
    grey = sorted((root / "ants" / "Imgs").glob("*.jpg"))[0]  # a grayscale photo named like a photo is kept
    Image.open(grey).convert("L").save(root / "ants" / "Imgs" / "grey_photo.png")
    shutil.copy(grey, root / "ants" / "Imgs" / "grey_photo.jpg")
    s = load_splits(DataConfig(path=root), seed=0)
    assert s.classes == ["ants", "bees"]
    files = [p for part in s.parts().values() for p in part.paths]
    assert len(files) == 22 and not any("mask" in p.name for p in files)
    assert all(p.suffix == ".jpg" for p in files if p.name != "grey_photo.png")
    assert any("ants/ holds its images in one folder, Imgs/" in n for n in s.notes)
    assert any(n.startswith("warning: left out 20 segmentation mask(s)") for n in s.notes)


def test_models_logs_notebooks_and_loose_files_at_the_root_are_not_classes(tmp_path, data_dir):
    root = tmp_path / "skin"
    _photos(root, data_dir)
    (root / "models").mkdir()
    (root / "models" / "best.h5").write_bytes(b"\x89HDF")
    (root / "logs").mkdir()
    (root / "logs" / "train.log").write_text("epoch 1")
    (root / ".ipynb_checkpoints" / "ants").mkdir(parents=True)
    shutil.copy(next((root / "ants").iterdir()), root / ".ipynb_checkpoints" / "ants" / "x.jpg")
    (root / "__MACOSX" / "bees").mkdir(parents=True)
    shutil.copy(next((root / "bees").iterdir()), root / "__MACOSX" / "bees" / "._y.jpg")
    shutil.copy(next((root / "ants").iterdir()), root / "confusion_matrix.png")
    (root / "README.txt").write_text("dataset card")
    s = load_splits(DataConfig(path=root), seed=0)
    assert s.classes == ["ants", "bees"] and len(s.train) + len(s.val) + len(s.test) == 20
    notes = "\n".join(s.notes)
    assert "left out logs/, models/: no images in it, so not a class" in notes
    assert "loose file(s) at the top of the dataset (README.txt)" in notes
    assert "1 image(s) at the top of the dataset, in no class folder (confusion_matrix.png)" in notes
    assert not s.skipped  # nothing in the class folders was refused


def test_derived_copy_beside_the_originals_is_never_mixed_in(tmp_path, data_dir):
    root = tmp_path / "leaves"
    _photos(root / "Original Data", data_dir)
    _photos(root / "Augmented Data", data_dir, start=10)
    s = load_splits(DataConfig(path=root), seed=0)
    files = [p for part in s.parts().values() for p in part.paths]
    assert len(files) == 20 and all("Original Data" in str(p) for p in files)
    warning = next(n for n in s.notes if "Augmented Data/" in n)
    assert warning.startswith("warning: left out Augmented Data/ (20 images)") and "derived" in warning
    derived = load_splits(DataConfig(path=_set_path_from_note(warning)), seed=0)  # and its command reads it alone
    assert all("Augmented Data" in str(p) for part in derived.parts().values() for p in part.paths)


def test_derived_copy_beside_the_class_folders_is_left_out(tmp_path, data_dir):
    root = tmp_path / "leaves"
    _photos(root, data_dir)
    _photos(root / "augmented", data_dir, 4, start=10)
    s = load_splits(DataConfig(path=root), seed=0)
    assert s.classes == ["ants", "bees"] and len(s.train) + len(s.val) + len(s.test) == 20
    assert any(n.startswith("warning: left out augmented/ (8 images)") for n in s.notes)


def _set_path_from_note(note: str) -> str:
    return shlex.split(note[note.index("--set"):])[1].split("=", 1)[1]


def test_split_folders_beside_an_unrelated_folder(tmp_path, data_dir):
    root = tmp_path / "defects"
    _photos(root / "train", data_dir, 8)
    _photos(root / "test", data_dir, 4, split="val")
    _photos(root / "extra_photos", data_dir, 3, split="val", start=20)
    (root / "docs").mkdir()
    (root / "docs" / "paper.pdf").write_bytes(b"%PDF")
    s = load_splits(DataConfig(path=root), seed=0)
    assert s.test.counts() == [4, 4] and len(s.train) + len(s.val) == 16
    notes = "\n".join(s.notes)
    assert "left out docs/: no images in it" in notes
    assert "warning: left out extra_photos/ (6 images): not a split folder" in notes


def test_two_datasets_side_by_side_stop_with_each_reading_and_its_command(tmp_path, data_dir):
    root = tmp_path / "two"
    _photos(root / "cropped", data_dir, 6)
    _photos(root / "full", data_dir, 8, start=6)
    started = time.monotonic()
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=root), seed=0)
    assert time.monotonic() - started < 10
    msg = str(err.value)
    assert "1. full/: class folders (2 classes), 16 images (ants 8, bees 8)" in msg
    assert "2. cropped/: class folders (2 classes), 12 images (ants 6, bees 6)" in msg
    chosen = load_splits(DataConfig(path=_set_path_from(msg, 1)), seed=0)
    assert chosen.classes == ["ants", "bees"] and len(chosen.train) + len(chosen.val) + len(chosen.test) == 16


def test_exclude_takes_out_what_the_user_names(tmp_path, data_dir):
    root = tmp_path / "ds"
    _photos(root, data_dir)
    _photos(root / "ants" / "unsure", data_dir, 2, start=30)  # would be a nested folder of images
    s = load_splits(DataConfig(path=root, exclude=["*/unsure", "bees/*_0*.jpg"]), seed=0)
    files = [p for part in s.parts().values() for p in part.paths]
    assert not any("unsure" in str(p) for p in files)
    assert s.train.counts()[0] + s.val.counts()[0] + s.test.counts()[0] == 10
    assert sum(p.parent.name == "bees" for p in files) == sum(not p.name.split("_")[-1].startswith("0")
                                                            for p in (root / "bees").iterdir())


def _kaggle(root, data_dir, species=4, per_class=6, seed=0):
    """A leaf-classification-style Kaggle folder: train.csv (id, species, 20 numeric features), images/<id>.jpg,
    an unlabelled test.csv, and a wide sample_submission.csv."""
    rnd = random.Random(seed)
    (root / "images").mkdir(parents=True)
    photos = sorted((data_dir / "train" / "ants").glob("*.jpg")) + sorted((data_dir / "train" / "bees").glob("*.jpg"))
    names = [f"Quercus_{k}" for k in range(species)]
    features = ",".join(f"margin{k}" for k in range(20))
    train, test = [f"id,species,{features}"], [f"id,{features}"]
    for i in range(species * per_class + 5):
        shutil.copy(photos[i], root / "images" / f"{i + 1}.jpg")
        row = ",".join(f"{rnd.random():.6f}" for _ in range(20))
        if i < species * per_class:
            train.append(f"{i + 1},{names[i % species]},{row}")
        else:
            test.append(f"{i + 1},{row}")
    (root / "train.csv").write_text("\n".join(train) + "\n")
    (root / "test.csv").write_text("\n".join(test) + "\n")
    (root / "sample_submission.csv").write_text("id," + ",".join(names) + "\n" + "\n".join(
        f"{i},{','.join(['0.25'] * species)}" for i in range(1, 6)) + "\n")
    return names


def test_kaggle_csv_with_id_column_and_feature_columns(tmp_path, data_dir):
    root = tmp_path / "leaf-classification"
    names = _kaggle(root, data_dir)
    s = load_splits(DataConfig(path=root / "train.csv", val_ratio=0.2, test_ratio=0.2), seed=0)
    assert s.classes == sorted(names) and len(s.train) + len(s.val) + len(s.test) == 24
    assert any("images from column 'id' as images/{id}.jpg" in n for n in s.notes)
    assert any("labels from column 'species'" in n for n in s.notes)
    assert dataset_name(str(root / "train.csv")) == "leaf-classification"  # not "train", as every Kaggle CSV is
    assert dataset_name(str(root / "train.csv")) != dataset_name(str(tmp_path / "other" / "train.csv"))


def test_unlabelled_csvs_are_refused_with_the_reason_and_the_labelled_one_named(tmp_path, data_dir):
    root = tmp_path / "leaf-classification"
    _kaggle(root, data_dir)
    for name in ("test.csv", "sample_submission.csv"):
        with pytest.raises(DataError) as err:
            load_splits(DataConfig(path=root / name), seed=0)
        msg = str(err.value)
        assert "looks unlabelled" in msg and "train.csv" in msg
        assert "margin7" not in msg and len(msg) < 700  # never the whole header


def test_ambiguous_label_column_names_the_likely_columns_and_the_setting_for_each(tmp_path, data_dir):
    root = tmp_path / "ds"
    _kaggle(root, data_dir)
    lines = (root / "train.csv").read_text().splitlines()
    rows = [lines[0].replace("species", "genus,habitat")]
    for k, row in enumerate(lines[1:]):
        ident, _, features = row.split(",", 2)
        rows.append(f"{ident},{('Acer', 'Betula', 'Quercus')[k % 3]},{('dry', 'wet')[k % 2]},{features}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=root / "train.csv"), seed=0)
    msg = str(err.value)
    assert "--set data.manifest.label_column=habitat" in msg and "--set data.manifest.label_column=genus" in msg
    assert "margin" not in msg
    s = load_splits(load_config(None, [f"data.path={root / 'train.csv'}", "data.manifest.label_column=genus"]).data,
                    seed=0)
    assert s.classes == ["Acer", "Betula", "Quercus"]


def test_inspect_prints_the_reading_without_training(tmp_path, data_dir):
    root = tmp_path / "skin"
    _photos(root / "Original Data", data_dir, 6)
    _photos(root / "Augmented Data", data_dir, 6, start=6)
    (root / "models").mkdir()
    text = describe(DataConfig(path=root))
    assert "layout: class folders (2 classes) in Original Data/" in text
    assert re.search(r"ants\s+6\n", text) and "Augmented Data/ (12 images)" in text
    out = subprocess.run([sys.executable, "-m", "training", "inspect", str(root)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == text, out.stderr
    (root / "Sharpened Data").mkdir()
    _photos(root / "Sharpened Data", data_dir, 3)
    out = subprocess.run([sys.executable, "-m", "training", "inspect", str(root)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "which one is yours" in out.stderr and "Traceback" not in out.stderr
