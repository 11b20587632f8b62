"""The user's own folder: split folders under their usual names, nested layouts, CSV manifests with their own columns
and split, small classes, and the same image in two splits. Fixtures are built from the real photos."""
import json
import shutil
from pathlib import Path

import pytest
from helpers import copy_images
from PIL import Image

from training import data_report
from training.config import DataConfig, ManifestConfig
from training.data import DataError, load_splits


def _classes(root, data_dir, split="train", ants=8, bees=8, start=0):
    for name, n in (("ants", ants), ("bees", bees)):
        src = sorted((data_dir / split / name).iterdir())[start:start + n]
        (root / name).mkdir(parents=True, exist_ok=True)
        for p in src:
            shutil.copy(p, root / name / p.name)


def test_kaggle_split_names_are_splits_not_classes(tmp_path, data_dir):
    """Failure 1 of the issue: training_set/ and test_set/ were read as two classes."""
    root = tmp_path / "cats_and_dogs"
    _classes(root / "training_set", data_dir, "train", 12, 12)
    _classes(root / "test_set", data_dir, "val", 5, 6)
    s = load_splits(DataConfig(path=root, val_ratio=0.25), seed=0)
    assert s.classes == ["ants", "bees"]
    assert s.test.counts() == [5, 6] and len(s.train) + len(s.val) == 24
    assert s.layout == "split folders (train=training_set, test=test_set)"


@pytest.mark.parametrize("train,val,test", [("Training", "Validation", "Testing"), ("trn", "dev", "TEST"),
                                            ("train", "valid", "test_set")])
def test_split_names_any_case(tmp_path, data_dir, train, val, test):
    root = tmp_path / "ds"
    _classes(root / train, data_dir, "train", 6, 6)
    _classes(root / val, data_dir, "train", 3, 3, start=10)
    _classes(root / test, data_dir, "val", 4, 4)
    s = load_splits(DataConfig(path=root), seed=0)
    assert (s.train.counts(), s.val.counts(), s.test.counts()) == ([6, 6], [3, 3], [4, 4])
    assert f"val={val}" in s.layout


def test_kaggle_double_folder_is_unwrapped(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root / "training_set" / "training_set", data_dir, "train", 8, 8)
    _classes(root / "test_set" / "test_set", data_dir, "val", 3, 3)
    s = load_splits(DataConfig(path=root, val_ratio=0.25), seed=0)
    assert s.classes == ["ants", "bees"] and s.test.counts() == [3, 3]


def test_nested_layout_stops_with_the_folders_and_what_to_pass(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root / "part1", data_dir, "train", 4, 4)
    _classes(root / "part2", data_dir, "val", 4, 4)
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=root), seed=0)
    msg = str(err.value)  # each reading, with its counts and the command that selects it; the splits alternative
    assert f"1. part1/: class folders (2 classes), 8 images (ants 4, bees 4): --set data.path={root}/part1" in msg
    assert f"2. part2/: class folders (2 classes), 8 images (ants 4, bees 4): --set data.path={root}/part2" in msg
    assert "train / val / test" in msg


def test_test_split_with_a_class_train_lacks_is_an_error(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root / "train", data_dir, "train", 6, 6)
    _classes(root / "test", data_dir, "val", 3, 3)
    copy_images(data_dir / "val" / "ants", root / "test" / "wasps", 2)
    with pytest.raises(DataError, match=r"\['wasps'\]"):
        load_splits(DataConfig(path=root), seed=0)


def _id_manifest(tmp_path, data_dir, split_column: bool):
    """The common `id,breed` form: files at train/<id>.jpg, labels in a column, optionally the team's split."""
    root = tmp_path / "pets"
    (root / "train").mkdir(parents=True)
    rows, expected = [], {}
    for label in ("ants", "bees"):
        for i, p in enumerate(sorted((data_dir / "train" / label).glob("*.jpg"))[:15]):
            ident = f"{label[0]}{i:03d}"
            shutil.copy(p, root / "train" / f"{ident}.jpg")
            split = "train" if i < 9 else "valid" if i < 12 else "test"
            expected[ident] = split
            rows.append(f"{ident},{label}" + (f",{split}" if split_column else ""))
    header = "id,breed" + (",fold" if split_column else "")
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "labels.csv", expected


def test_csv_with_id_column_path_template_and_split_column(tmp_path, data_dir):
    csv_path, expected = _id_manifest(tmp_path, data_dir, split_column=True)
    m = ManifestConfig(path_template="train/{id}.jpg", label_column="breed", split_column="fold")
    s = load_splits(DataConfig(path=csv_path, manifest=m), seed=0)
    assert s.classes == ["ants", "bees"]
    got = {p.stem: name for name, part in s.parts().items() for p in part.paths}
    assert got == {k: {"valid": "val"}.get(v, v) for k, v in expected.items()}  # the team's split, kept exactly
    assert "split column 'fold'" in s.layout


def test_csv_without_split_column_is_split_at_random(tmp_path, data_dir):
    csv_path, _ = _id_manifest(tmp_path, data_dir, split_column=False)
    m = ManifestConfig(path_template="train/{id}.jpg", label_column="breed")
    s = load_splits(DataConfig(path=csv_path, manifest=m, val_ratio=0.2, test_ratio=0.2), seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 30 and s.test.counts() == [3, 3]


def test_csv_columns_are_found_from_the_content(tmp_path, data_dir):
    csv_path, expected = _id_manifest(tmp_path, data_dir, split_column=True)
    s = load_splits(DataConfig(path=csv_path), seed=0)  # nothing set: id -> train/<id>.jpg, breed, fold
    got = {p.stem: name for name, part in s.parts().items() for p in part.paths}
    assert got == {k: {"valid": "val"}.get(v, v) for k, v in expected.items()}
    assert s.classes == ["ants", "bees"]
    assert any("column 'id' as train/{id}.jpg" in n for n in s.notes)
    assert any("labels from column 'breed'" in n for n in s.notes) and any("column 'fold'" in n for n in s.notes)


def test_csv_errors_name_the_columns_and_values(tmp_path, data_dir):
    csv_path, _ = _id_manifest(tmp_path, data_dir, split_column=True)
    with pytest.raises(DataError, match=r"column\(s\) \['species'\] not in the header \(3 columns: id, breed, fold\)"):
        load_splits(DataConfig(path=csv_path, manifest=ManifestConfig(label_column="species")), seed=0)
    text = csv_path.read_text().replace(",valid\n", ",holdout\n", 1)
    csv_path.write_text(text)
    m = ManifestConfig(path_template="train/{id}.jpg", label_column="breed", split_column="fold")
    with pytest.raises(DataError, match="split 'holdout' is not one of"):
        load_splits(DataConfig(path=csv_path, manifest=m), seed=0)


def test_class_with_two_images_is_a_clear_error_or_dropped(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root, data_dir, "train", 20, 20)
    copy_images(data_dir / "val" / "ants", root / "wasps", 2)
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=root), seed=0)
    msg = str(err.value)
    assert "class 'wasps': 2 image(s)" in msg and "needs at least 5" in msg and "data.small_classes=drop" in msg
    assert "least populated class" not in msg  # scikit-learn's own message never reaches the user
    s = load_splits(DataConfig(path=root, small_classes="drop"), seed=0)
    assert s.classes == ["ants", "bees"] and "wasps" in s.dropped_classes
    assert all(max(part.labels) == 1 for part in s.parts().values())


def test_duplicates_across_splits_exact_and_near(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root / "train", data_dir, "train", 8, 8)
    _classes(root / "test", data_dir, "val", 4, 4)
    leaked = sorted((root / "test" / "ants").iterdir())
    shutil.copy(leaked[0], root / "train" / "ants" / "exact_copy.jpg")
    with Image.open(leaked[1]) as im:  # re-encoded at another size and quality: other bytes, same picture
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(root / "train" / "ants" / "near.jpg", quality=70)
    s = load_splits(DataConfig(path=root, val_ratio=0.2), seed=0)
    kept, report = data_report.prepare(s, "warn", 4, 64)
    # the copies went into train or into the validation carved from it: either way they group with a test image
    pairs = {(g["kind"], Path(a).name, Path(b).name) for g in report["duplicates"]["groups"]
             if g["splits"].endswith("-test") for a in g[g["splits"].split("-")[0] + "_files"] for b in g["test_files"]}
    assert ("exact", "exact_copy.jpg", leaked[0].name) in pairs
    assert ("near", "near.jpg", leaked[1].name) in pairs
    assert report["duplicates"]["exact"] >= 1 and report["duplicates"]["near"] >= 1
    assert len(kept.train) == len(s.train)  # warn keeps them
    dropped, report = data_report.prepare(s, "drop_from_train", 4, 64)
    train_names = {p.name for p in dropped.train.paths}
    leaked_into_train = {"exact_copy.jpg", "near.jpg"} & {p.name for p in s.train.paths}
    assert leaked_into_train, "seed 0 keeps at least one copy in train (the rest of the test needs one)"
    assert report["duplicates"]["dropped_from_train"] == len(leaked_into_train)
    assert not leaked_into_train & train_names, "leaked copies must leave the training split"
    assert len(dropped.train) == len(s.train) - len(leaked_into_train)


def test_data_report_counts_sizes_skips(tmp_path, data_dir):
    root = tmp_path / "ds"
    _classes(root / "train", data_dir, "train", 8, 8)
    _classes(root / "val", data_dir, "val", 4, 4)
    (root / "train" / "bees" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    s = load_splits(DataConfig(path=root, val_ratio=0.25), seed=0)
    _, report = data_report.prepare(s, "warn", 4, 224)
    data_report.write(report, tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "data.json").read_text())
    assert saved["counts"]["test"] == {"ants": 4, "bees": 4}
    assert sum(saved["counts"]["train"].values()) + sum(saved["counts"]["val"].values()) == 16
    assert [x["path"].rsplit("/", 1)[-1] for x in saved["skipped"]] == ["broken.jpg"]
    widths = saved["image_sizes"]["test"]["width"]
    assert widths[0] <= widths[1] <= widths[2] and widths[0] > 0
    md = (tmp_path / "report" / "data.md").read_text()
    assert "split folders (train=train, val=val)" in md and "| ants | " in md


def test_csv_file_listed_in_two_splits_keeps_both_and_is_reported(tmp_path, data_dir):
    csv_path, _ = _id_manifest(tmp_path, data_dir, split_column=True)
    text = csv_path.read_text()
    csv_path.write_text(text + "a000,ants,test\n")  # a000 is a training row too: the same file in two splits
    m = ManifestConfig(path_template="train/{id}.jpg", label_column="breed", split_column="fold")
    s = load_splits(DataConfig(path=csv_path, manifest=m), seed=0)
    assert "a000" in {p.stem for p in s.train.paths} and "a000" in {p.stem for p in s.test.paths}
    _, report = data_report.prepare(s, "warn", 4, 64)
    assert report["duplicates"]["by_splits"]["train-test"]["exact_groups"] >= 1
