"""Which folder layout a dataset directory has: class folders, or split folders (train/val/test under their usual
names) holding class folders. A layout the scan cannot interpret is an error that says what to pass instead, never
a dataset whose "classes" are split names."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .image_files import IMAGE_SUFFIXES

# Split folder names seen in public datasets, matched case-insensitively.
SPLIT_NAMES = {"train": ("train", "training", "training_set", "trn"),
               "val": ("val", "valid", "validation", "dev"),
               "test": ("test", "testing", "test_set")}


def split_role(name: str) -> str | None:
    """'train' | 'val' | 'test' for a split folder (or a manifest's split value), else None."""
    low = name.strip().lower()
    return next((role for role, names in SPLIT_NAMES.items() if low in names), None)


@dataclass
class FolderLayout:
    root: Path
    classes: list[str]
    splits: dict[str, Path] = field(default_factory=dict)  # role -> folder; empty for plain class folders

    def describe(self) -> str:
        if not self.splits:
            return f"class folders ({len(self.classes)} classes)"
        return "split folders (" + ", ".join(f"{r}={p.relative_to(self.root)}" for r, p in self.splits.items()) + ")"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def _unwrap(folder: Path) -> Path:
    """Kaggle's `training_set/training_set/<class>`: a split folder whose only content is one folder of the same
    role stands for that folder."""
    inner = _subdirs(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(inner) == 1 and not files and split_role(inner[0].name) == split_role(folder.name):
        return inner[0]
    return folder


def _check_not_nested(root: Path, classes: list[str]) -> None:
    nested = [f"{c}/{d.name}" for c in classes for d in _subdirs(root / c) if _has_images(d)]
    if nested:
        shown = ", ".join(nested[:6]) + (f" and {len(nested) - 6} more" if len(nested) > 6 else "")
        raise DataError(
            f"{root}: class folders hold sub-folders of images ({shown}); the scan reads one level of class folders "
            f"and cannot tell whether those sub-folders are classes or splits. If they are classes, set data.path to "
            f"the folder that holds them; if the top folders are splits, name them train / val / test (also training, "
            f"training_set, valid, validation, dev, testing, test_set); or list the files in a CSV manifest.")


def _class_folders(folder: Path) -> list[str]:
    classes = [d.name for d in _subdirs(folder)]
    if not classes:
        raise DataError(f"{folder} has no class folders: expected {folder}/<class>/<image files>")
    return classes


def detect(root: Path) -> FolderLayout:
    dirs = _subdirs(root)
    roles: dict[str, Path] = {}
    for d in dirs:
        role = split_role(d.name)
        if role is None:
            continue
        if role in roles:
            raise DataError(f"{root}: both {roles[role].name}/ and {d.name}/ look like the {role} split; keep one")
        roles[role] = _unwrap(d)
    if not roles:
        classes = _class_folders(root)
        _check_not_nested(root, classes)
        return FolderLayout(root, classes)
    others = [d.name for d in dirs if split_role(d.name) is None]
    if "train" not in roles or others:
        raise DataError(
            f"{root}: found split folder(s) {sorted(p.name for p in roles.values())} "
            + (f"beside other folders {others}" if others else "but no training split") + "; a dataset is either "
            "class folders, or split folders (train/, and val/ and/or test/) each holding the same class folders")
    if set(roles) == {"train"}:
        raise DataError(f"{root}: {roles['train'].name}/ exists but neither a val nor a test folder: add one, or drop "
                        "the split folder and let the job split the classes")
    classes = _class_folders(roles["train"])
    for role, folder in roles.items():
        _check_not_nested(folder, _class_folders(folder))
        extra = sorted(set(_class_folders(folder)) - set(classes))
        if extra:
            raise DataError(f"{folder} has class folder(s) {extra} that {roles['train']} lacks; the model can only "
                            "learn classes it trains on: add their training images or remove them")
    order = [r for r in ("train", "val", "test") if r in roles]
    return FolderLayout(root, classes, {r: roles[r] for r in order})
