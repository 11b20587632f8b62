"""Find the labelled images of a dataset and split them into train / val / test.

Three layouts: a folder of class folders (optionally already split into train/ val/ test/), a CSV manifest
`path,label`, and CIFAR-10/100 in their python-batch archive layout. Unreadable images are skipped and reported,
never fatal; a dataset that cannot train (missing, empty class, single class) is a clear error.
"""
from __future__ import annotations

import csv
import hashlib
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from .config import DataConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class DataError(ValueError):
    """The dataset cannot be used as given; the message says what to fix."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode as the service does: EXIF orientation applied, any mode converted to RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


@dataclass
class ImageSet:
    """Images of one split: file paths, or an in-memory uint8 array [N, H, W, 3] (CIFAR)."""
    classes: list[str]
    labels: list[int]
    paths: list[Path] | None = None
    array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i]) if self.array is not None else load_rgb(self.paths[i])

    def subset(self, idx) -> "ImageSet":
        idx = list(idx)
        return ImageSet(self.classes, [self.labels[i] for i in idx],
                        [self.paths[i] for i in idx] if self.paths is not None else None,
                        self.array[idx] if self.array is not None else None)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def files_digest(self) -> str:
        """Identity of the split's contents (files and labels, or the array's bytes), for cache keys."""
        h = hashlib.sha256(json.dumps([self.classes, self.labels]).encode())
        if self.paths is not None:
            h.update("\n".join(map(str, self.paths)).encode())
        if self.array is not None:
            h.update(np.ascontiguousarray(self.array).data)
        return h.hexdigest()


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def _check_image(path: Path) -> str | None:
    """None if the file decodes fully, else the reason. Draft mode keeps JPEG checks cheap but still reads every byte."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))
            im.load()
        return None
    except Exception as exc:  # PIL raises many types for bad files; all mean "skip it"
        return f"{type(exc).__name__}: {exc}"


def _keep_readable(paths: list[Path], labels: list[int], skipped: list) -> tuple[list[Path], list[int]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(_check_image, paths))
    kept = [(p, y) for p, y, r in zip(paths, labels, reasons) if r is None]
    skipped.extend((str(p), r) for p, r in zip(paths, reasons) if r is not None)
    return [p for p, _ in kept], [y for _, y in kept]


def _class_folders(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    return classes


def _scan_folder(root: Path, classes: list[str], skipped: list) -> ImageSet:
    paths, labels = [], []
    for y, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(y)
            else:  # reported, not silently dropped: a stray file in a class folder is usually a data mistake
                skipped.append((str(p), f"unsupported file type '{p.suffix}' (reads {', '.join(sorted(IMAGE_SUFFIXES))})"))
    paths, labels = _keep_readable(paths, labels, skipped)
    return ImageSet(classes, labels, paths=paths)


def _stratified(images: ImageSet, ratio: float, seed: int) -> tuple[ImageSet, ImageSet]:
    idx = np.arange(len(images))
    try:
        a, b = train_test_split(idx, test_size=ratio, random_state=seed, stratify=images.labels)
    except ValueError as exc:
        raise DataError(f"cannot split {len(images)} images by class with ratio {ratio}: {exc}") from None
    return images.subset(sorted(a)), images.subset(sorted(b))


def _read_csv(path: Path, skipped: list) -> ImageSet:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{path}: expected a header 'path,label' and at least one row")
    classes = sorted({r["label"] for r in rows})
    paths = [(path.parent / r["path"]) if not Path(r["path"]).is_absolute() else Path(r["path"]) for r in rows]
    labels = [classes.index(r["label"]) for r in rows]
    paths, labels = _keep_readable(paths, labels, skipped)
    return ImageSet(classes, labels, paths=paths)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_set(batches: list[Path], label_key: str, classes: list[str]) -> ImageSet:
    data, labels = [], []
    for b in batches:
        d = _unpickle(b)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += list(d[label_key])
    return ImageSet(classes, labels, array=np.ascontiguousarray(np.concatenate(data)))


def _read_cifar(root: Path, kind: str) -> tuple[ImageSet, ImageSet]:
    for sub in ("cifar-10-batches-py", "cifar-100-python", "."):
        if (root / sub / ("batches.meta" if kind == "cifar10" else "meta")).is_file():
            root = root / sub
            break
    else:
        raise DataError(f"{root}: no {kind} python-batch archive (batches.meta / meta) found")
    if kind == "cifar10":
        classes = _unpickle(root / "batches.meta")["label_names"]
        train = _cifar_set(sorted(root.glob("data_batch_*")), "labels", classes)
        test = _cifar_set([root / "test_batch"], "labels", classes)
    else:
        classes = _unpickle(root / "meta")["fine_label_names"]
        train = _cifar_set([root / "train"], "fine_labels", classes)
        test = _cifar_set([root / "test"], "fine_labels", classes)
    return train, test


def _detect_source(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if (path / "cifar-10-batches-py").is_dir() or (path / "batches.meta").is_file():
        return "cifar10"
    if (path / "cifar-100-python").is_dir() or (path / "meta").is_file():
        return "cifar100"
    return "folder"


def _limit(images: ImageSet, per_class: int | None) -> ImageSet:
    if per_class is None:
        return images
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(images.labels):
        if seen.get(y, 0) < per_class:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return images.subset(keep)


def _check_usable(splits: Splits) -> None:
    classes = splits.classes
    if len(classes) < 2:
        raise DataError(f"only one class ({classes}): classification needs at least two class folders")
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        empty = [c for c, n in zip(classes, part.counts()) if n == 0]
        if empty:
            raise DataError(f"{name} split has no readable images for class(es) {empty}; add images or remove the class")


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """train/val/test. With split folders: test = test/ (or val/ when there is no test/), val carved from train
    unless both val/ and test/ exist. Without: stratified split by seed and ratios."""
    root = Path(cfg.path)
    if not root.exists():
        raise DataError(f"dataset not found: {root} (set data.path to a folder of class folders, a CSV or CIFAR)")
    source = _detect_source(root) if cfg.source == "auto" else cfg.source
    skipped: list = []
    if source in ("cifar10", "cifar100"):
        train, test = _read_cifar(root, source)
        train, val = _stratified(train, cfg.val_ratio, seed)
    elif source == "csv":
        train, test = _stratified(_read_csv(root, skipped), cfg.test_ratio, seed)
        train, val = _stratified(train, cfg.val_ratio / (1 - cfg.test_ratio), seed)
    elif (root / "train").is_dir():
        classes = _class_folders(root / "train")
        train = _scan_folder(root / "train", classes, skipped)
        has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
        if has_val and has_test:
            val, test = _scan_folder(root / "val", classes, skipped), _scan_folder(root / "test", classes, skipped)
        elif not (has_val or has_test):
            raise DataError(f"{root}/train exists but neither val/ nor test/: add one, or drop the split folders")
        else:
            test = _scan_folder(root / ("test" if has_test else "val"), classes, skipped)
            train, val = _stratified(train, cfg.val_ratio, seed)
    else:
        everything = _scan_folder(root, _class_folders(root), skipped)
        train, test = _stratified(everything, cfg.test_ratio, seed)
        train, val = _stratified(train, cfg.val_ratio / (1 - cfg.test_ratio), seed)
    splits = Splits(*(_limit(s, cfg.limit_per_class) for s in (train, val, test)), skipped=skipped)
    _check_usable(splits)
    return splits
