"""Find the labelled images of a dataset and split them into train / val / test.

Layouts: class folders, optionally inside split folders under their usual names (training.layouts); a CSV manifest
with configurable columns, path template and split column (training.manifest); CIFAR-10/100 python batches.
Unreadable images are skipped and reported, never fatal. A dataset that cannot train (missing, empty or too small
class, single class) is a clear error, or follows data.small_classes=drop.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from contract.card import MAX_CLASS_NAME_CHARS
from contract.preprocess import load_rgb  # training decodes files as the service decodes requests

from . import copies
from .config import DataConfig
from .errors import DataError
from .image_files import IMAGE_SUFFIXES, FileInfo, FileLimits, inspect_all, inspect_array
from .layouts import Exclude, detect, is_image_name, shown, visible
from .manifest import read_manifest
from .masks import find_masks

__all__ = ["DataError", "ImageSet", "Splits", "load_rgb", "load_splits"]
SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """Images of one split: file paths, or an in-memory uint8 array [N, H, W, 3] (CIFAR); infos per image."""
    classes: list[str]
    labels: list[int]
    paths: list[Path] | None = None
    array: np.ndarray | None = None
    infos: list[FileInfo] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i]) if self.array is not None else load_rgb(self.paths[i])

    def source(self, i: int) -> bytes | Image.Image:
        """The file's bytes (decoded by contract.preprocess, as a request is), or the in-memory image."""
        return Image.fromarray(self.array[i]) if self.array is not None else Path(self.paths[i]).read_bytes()

    def subset(self, idx) -> "ImageSet":
        idx = list(idx)
        return ImageSet(self.classes, [self.labels[i] for i in idx],
                        [self.paths[i] for i in idx] if self.paths is not None else None,
                        self.array[idx] if self.array is not None else None,
                        [self.infos[i] for i in idx] if self.infos is not None else None)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def name(self, i: int) -> str:
        return str(self.paths[i]) if self.paths is not None else f"#{i}"

    def files_digest(self) -> str:
        """Identity of the split's contents (files and labels, or the array's bytes), for cache keys."""
        h = hashlib.sha256(json.dumps([self.classes, self.labels]).encode())
        if self.paths is not None:
            h.update("\n".join(map(str, self.paths)).encode())
        if self.array is not None:
            h.update(np.ascontiguousarray(self.array).data)
        return h.hexdigest()

    def relabelled(self, classes: list[str]) -> "ImageSet":
        """Only the images of `classes` (a subset of self.classes), labelled by their index there."""
        keep = [i for i, y in enumerate(self.labels) if self.classes[y] in classes]
        part = self.subset(keep)
        part.classes, part.labels = classes, [classes.index(self.classes[y]) for y in part.labels]
        return part


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    layout: str = ""
    dropped_classes: dict[str, str] = field(default_factory=dict)  # class -> why (data.small_classes=drop)
    notes: list[str] = field(default_factory=list)  # what the reading left out or inferred (training.layouts)
    test_copies: list[int] = field(default_factory=list)  # test images with a copy in train (training.data_report)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def parts(self) -> dict[str, ImageSet]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def scored_test(self) -> ImageSet:
        """The test images without a copy in train: what the accuracy is reported, gated and published on."""
        leaked = set(self.test_copies)
        return self.test.subset(i for i in range(len(self.test)) if i not in leaked) if leaked else self.test

    def data_digest(self) -> str:
        """What was trained on, by content: classes, and each split's (class, file sha256) pairs in any order."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for name, part in self.parts().items():
            rows = sorted(f"{part.classes[y]}\t{info.sha256}" for y, info in zip(part.labels, part.infos))
            h.update(f"\n[{name}]\n".encode() + "\n".join(rows).encode())
        return h.hexdigest()


@dataclass
class ClassPolicy:
    """data.small_classes: a class that cannot fill every split stops the job (error) or is left out (drop)."""
    mode: str
    dropped: dict[str, str] = field(default_factory=dict)

    def too_small(self, problems: dict[str, str], advice: str) -> None:
        if not problems:
            return
        if self.mode == "error":
            raise DataError("; ".join(f"class '{c}': {why}" for c, why in problems.items()) + ". " + advice +
                            ", or set data.small_classes=drop to leave such classes out (listed in the data report)")
        for c, why in problems.items():
            self.dropped.setdefault(c, why)


def _readable(paths: list[Path], labels: list[int], classes: list[str], skipped: list,
              limits: FileLimits) -> tuple[ImageSet, list[int]]:
    """The images that decode, and which of the given rows they are; the others go to `skipped` with the reason."""
    results = inspect_all(paths, limits)
    keep = [i for i, (info, _) in enumerate(results) if info is not None]
    skipped.extend((str(p), reason) for p, (info, reason) in zip(paths, results) if info is None)
    images = ImageSet(classes, [labels[i] for i in keep], paths=[paths[i] for i in keep],
                      infos=[results[i][0] for i in keep])
    return images, keep


def list_class_folder(folder: Path, exclude: Exclude, limits: FileLimits) -> tuple[list[Path], list, dict]:
    """(image files, skipped (path, reason), masks -> their photo) of one class folder. Every visible entry is an
    image, a segmentation mask (left out, training.masks) or a line in the skipped list saying why not (another file
    type, a folder named like an image, a broken link); hidden entries (.DS_Store) and sub-folders are passed over
    (training.layouts refuses sub-folders that hold images)."""
    images, skipped = [], []
    reads = ", ".join(sorted(IMAGE_SUFFIXES))
    for p in (visible(folder, exclude) if folder.is_dir() else []):
        if is_image_name(p):  # folders and broken links named like images: skipped with why by the intake
            images.append(p)
        elif p.is_symlink() and not p.exists():
            skipped.append((str(p), "broken or looping symbolic link"))
        elif not p.is_dir():  # reported, not silently dropped: a stray file is usually a data mistake
            skipped.append((str(p), f"unsupported file type '{p.suffix}' (reads {reads})"))
    masks = find_masks(images, limits)
    return [p for p in images if p not in masks], skipped, masks


def _scan_folder(dirs: dict[str, Path], classes: list[str], exclude: Exclude, skipped: list, notes: list,
                 limits: FileLimits) -> ImageSet:
    paths, labels, masks = [], [], {}
    for y, name in enumerate(classes):
        images, bad, found = list_class_folder(dirs[name], exclude, limits) if name in dirs else ([], [], {})
        paths += images
        labels += [y] * len(images)
        skipped += bad
        masks.update(found)
    if masks:
        notes.append(f"warning: left out {len(masks)} segmentation mask(s): single-channel images of a few values "
                     "named like a photo beside them (" + shown([f"{m.relative_to(exclude.root)} of {p.name}"
                                                                 for m, p in masks.items()]) + ")")
    return _readable(paths, labels, classes, skipped, limits)[0]


def indices_by_content(images: ImageSet) -> dict[str, list[int]]:
    """sha256 -> the indices of the images with that content, in order."""
    by_sha: dict[str, list[int]] = {}
    for i, info in enumerate(images.infos):
        by_sha.setdefault(info.sha256, []).append(i)
    return by_sha


def phashes(images: ImageSet) -> np.ndarray:
    return np.array([info.phash for info in images.infos], dtype=np.uint64)


def copy_groups(images: ImageSet, near_bits: int | None) -> list[list[int]]:
    """The images grouped by picture: exact copies (file sha256) and, unless near_bits is None, near copies (pHash
    within near_bits, confirmed by training.copies' second measure) form one group, every other image its own.
    Groups are ordered by their first image, so a set without copies gives [[0], [1], ...]."""
    exact = sorted(indices_by_content(images).values(), key=lambda g: g[0])
    if near_bits is None or len(exact) < 2:
        return exact
    firsts = [g[0] for g in exact]  # one image per content: near links between distinct files only
    sub = images.subset(firsts)
    links = copies.near_links(phashes(sub), near_bits, sub.source)
    return sorted(([i for k in group for i in exact[k]] for group in copies.groups(len(exact), links)),
                  key=lambda g: min(g))


def _carve(images: ImageSet, ratio: float, seed: int, what: str, policy: ClassPolicy,
           near_bits: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Stratified split of `ratio` off `images`; every class must be able to put an image in both parts. Copies go
    to one part together (issue 29): a split the product carves never puts the same picture on both sides. Without
    copies every group is one image and the split is the plain stratified one, as before."""
    need = math.ceil(1 / min(ratio, 1 - ratio))
    groups = [sorted(g) for g in copy_groups(images, near_bits)]
    pictures = np.bincount([images.labels[g[0]] for g in groups], minlength=len(images.classes))
    files = images.counts()
    policy.too_small({c: (f"{n} image(s)" if n == m else f"{n} distinct image(s) ({m} files; copies count once)")
                      + f" where splitting off {ratio:.0%} for {what} needs at least {need} (one in each part)"
                      for c, n, m in zip(images.classes, pictures, files) if 0 < n < need and c not in policy.dropped},
                     f"Add images, merge or remove the class, or raise the {what} ratio")
    groups = [g for g in groups if images.classes[images.labels[g[0]]] not in policy.dropped]
    try:
        a, b = train_test_split(np.arange(len(groups)), test_size=ratio, random_state=seed,
                                stratify=[images.labels[g[0]] for g in groups])
    except ValueError as exc:
        raise DataError(f"cannot split {len(groups)} distinct pictures by class for {what} with ratio {ratio}: "
                        f"{exc}") from None
    return (images.subset(sorted(i for k in a for i in groups[k])),
            images.subset(sorted(i for k in b for i in groups[k])))


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_set(batches: list[Path], label_key: str, classes: list[str]) -> ImageSet:
    data, labels = [], []
    for b in batches:
        d = _unpickle(b)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += list(d[label_key])
    array = np.ascontiguousarray(np.concatenate(data))
    return ImageSet(classes, labels, array=array, infos=inspect_array(array))


def _read_cifar(root: Path, kind: str) -> dict[str, ImageSet]:
    for sub in ("cifar-10-batches-py", "cifar-100-python", "."):
        if (root / sub / ("batches.meta" if kind == "cifar10" else "meta")).is_file():
            root = root / sub
            break
    else:
        raise DataError(f"{root}: no {kind} python-batch archive (batches.meta / meta) found")
    if kind == "cifar10":
        classes = _unpickle(root / "batches.meta")["label_names"]
        return {"train": _cifar_set(sorted(root.glob("data_batch_*")), "labels", classes),
                "test": _cifar_set([root / "test_batch"], "labels", classes)}
    classes = _unpickle(root / "meta")["fine_label_names"]
    return {"train": _cifar_set([root / "train"], "fine_labels", classes),
            "test": _cifar_set([root / "test"], "fine_labels", classes)}


def _read_csv(path: Path, cfg: DataConfig, skipped: list, notes: list) -> tuple[dict[str, ImageSet], str]:
    m = read_manifest(path, cfg.manifest, cfg.allow_outside_paths)
    notes += m.columns.notes
    classes = sorted(set(m.labels))
    check_class_names(classes, f"{path} ({m.columns.label_column} column)")
    roles = m.roles or ["all"] * len(m.paths)
    everything, rows = _readable(m.paths, [classes.index(c) for c in m.labels], classes, skipped, limits_of(cfg))
    kept_roles = [roles[row] for row in rows]  # by row, not by path: a file listed twice keeps both of its splits
    given = {r: everything.subset(i for i, role in enumerate(kept_roles) if role == r) for r in sorted(set(roles))}
    if set(given) == {"train"}:
        raise DataError(f"{path}: the split column {m.columns.split_column} marks every row as train; mark "
                        "some val and/or test, or unset data.manifest.split_column to split at random")
    if "all" not in given and "train" not in given:
        raise DataError(f"{path}: the split column has no train rows")
    kind = f"split column '{m.columns.split_column}'" if m.roles else "random split"
    return given, f"CSV manifest {path.name} ({kind})"


def _read_folders(root: Path, cfg: DataConfig, skipped: list, notes: list) -> tuple[dict[str, ImageSet], str]:
    layout = detect(root, tuple(cfg.exclude))
    check_class_names(layout.classes, f"{root} (class folders)")
    notes += layout.notes
    exclude = Exclude(root, tuple(cfg.exclude))
    return {r: _scan_folder(dirs, layout.classes, exclude, skipped, notes, limits_of(cfg))
            for r, dirs in layout.class_dirs.items()}, layout.describe()


def limits_of(cfg: DataConfig) -> FileLimits:
    return FileLimits(max_bytes=cfg.max_file_bytes, max_pixels=cfg.max_image_pixels)


def check_class_names(classes: list[str], where: str) -> None:
    """A class name is shown on dashboards, in Prometheus labels, logs and answers: a control character (a newline,
    a tab) in one is a mistake in the data, refused here rather than met after training."""
    bad = [c for c in classes if any(unicodedata.category(ch).startswith("C") for ch in c) or not c.strip()]
    if bad:
        raise DataError(f"{where}: class name(s) {bad[:10]} are empty or hold control characters "
                        "(newline, tab, ...); rename them")
    long = [c[:40] + "..." for c in classes if len(c) > MAX_CLASS_NAME_CHARS]
    if long:
        raise DataError(f"{where}: class name(s) {long[:10]} are longer than {MAX_CLASS_NAME_CHARS} characters "
                        "(the longest a folder name can be, and what the service accepts back); shorten them")


def detect_source(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if (path / "cifar-10-batches-py").is_dir() or (path / "batches.meta").is_file():
        return "cifar10"
    if (path / "cifar-100-python").is_dir() or (path / "meta").is_file():
        return "cifar100"
    return "folder"


def _complete(given: dict[str, ImageSet], cfg: DataConfig, seed: int, policy: ClassPolicy):
    """train/val/test from what the dataset provides. Nothing split: stratified by seed and ratios (of the whole).
    train + test: val carved from train. train + val only: val is the test split and val is carved from train."""
    bits = cfg.near_duplicate_bits
    if "all" in given:
        train, test = _carve(given["all"], cfg.test_ratio, seed, "test (data.test_ratio)", policy, bits)
        train, val = _carve(train, cfg.val_ratio / (1 - cfg.test_ratio), seed, "validation (data.val_ratio)", policy,
                            bits)
        return train, val, test
    if "val" in given and "test" in given:
        return given["train"], given["val"], given["test"]
    test = given.get("test", given.get("val"))
    train, val = _carve(given["train"], cfg.val_ratio, seed, "validation (data.val_ratio)", policy, bits)
    return train, val, test


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


def _check_usable(parts: dict[str, ImageSet], policy: ClassPolicy) -> list[str]:
    """The classes the model will have: every class needs images in every split (or is dropped by the policy)."""
    classes = parts["train"].classes
    for name, part in parts.items():
        policy.too_small({c: f"no readable images in the {name} split" for c, n in zip(classes, part.counts())
                          if n == 0 and c not in policy.dropped}, "Add images or remove the class")
    kept = [c for c in classes if c not in policy.dropped]
    if len(kept) < 2:
        raise DataError(f"only one class ({kept}): classification needs at least two class folders"
                        + (f" (left out as too small: {sorted(policy.dropped)})" if policy.dropped else ""))
    return kept


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    root = Path(cfg.path)
    if not root.exists():
        raise DataError(f"dataset not found: {root} (set data.path to a folder of class folders, a CSV or CIFAR)")
    source = detect_source(root) if cfg.source == "auto" else cfg.source
    skipped: list = []
    notes: list[str] = []  # what the reading left out or inferred, and why: logged and in the data report
    policy = ClassPolicy(cfg.small_classes)
    if source in ("cifar10", "cifar100"):
        given, layout = _read_cifar(root, source), f"{source} python batches (train, test)"
    elif source == "csv":
        given, layout = _read_csv(root, cfg, skipped, notes)
    else:
        given, layout = _read_folders(root, cfg, skipped, notes)
    parts = dict(zip(SPLITS, (_limit(s, cfg.limit_per_class) for s in _complete(given, cfg, seed, policy))))
    kept = _check_usable(parts, policy)
    if policy.dropped:
        parts = {k: v.relabelled(kept) for k, v in parts.items()}
    return Splits(**parts, skipped=skipped, layout=layout, dropped_classes=policy.dropped, notes=notes)
