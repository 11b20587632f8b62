"""`python -m training inspect DATA`: how the job would read a dataset, in seconds, before anything trains.

The same reading the job does at its start (training.layouts, training.csv_columns, training.masks): layout,
classes, image files per class and split, what was left out or inferred and why. File names are counted, nothing is
decoded, so it answers quickly on any size; files that fail to decode are found and listed by the job's intake.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .config import DataConfig
from .data import detect_source, limits_of, list_class_folder
from .errors import DataError
from .layouts import Exclude, detect, set_path
from .manifest import read_manifest


def _table(classes: list[str], counts: dict[str, Counter]) -> list[str]:
    roles = list(counts)
    width = max(len(c) for c in classes)
    lines = [f"  {'class':<{width}}  " + "  ".join(f"{r:>6}" for r in roles)]
    lines += [f"  {c:<{width}}  " + "  ".join(f"{counts[r][c]:>6}" for r in roles) for c in classes]
    return lines


def _folders(cfg: DataConfig) -> tuple[str, list[str], dict[str, Counter], list[str]]:
    root = Path(cfg.path)
    layout = detect(root, tuple(cfg.exclude))
    exclude, notes, counts = Exclude(root, tuple(cfg.exclude)), list(layout.notes), {}
    masks = skipped = 0
    for role, dirs in layout.class_dirs.items():
        counts[role] = Counter()
        for c, folder in dirs.items():
            images, bad, found = list_class_folder(folder, exclude, limits_of(cfg))
            counts[role][c] = len(images)
            masks, skipped = masks + len(found), skipped + len(bad)
    if masks:
        notes.append(f"warning: {masks} segmentation mask(s) beside the photos will be left out")
    if skipped:
        notes.append(f"{skipped} file(s) in class folders are not images (listed in the job's data report)")
    return layout.describe(), layout.classes, counts, notes


def _csv(cfg: DataConfig) -> tuple[str, list[str], dict[str, Counter], list[str]]:
    m = read_manifest(Path(cfg.path), cfg.manifest, cfg.allow_outside_paths)
    roles = m.roles or ["all"] * len(m.labels)
    counts = {r: Counter(label for label, role in zip(m.labels, roles) if role == r)
              for r in ("train", "val", "test", "all") if r in roles}
    layout = f"CSV manifest ({'split column ' + repr(m.columns.split_column) if m.roles else 'random split'})"
    return layout, sorted(set(m.labels)), counts, m.columns.notes


def describe(cfg: DataConfig) -> str:
    """The reading as text; a dataset the job would refuse raises DataError with the readings it could take."""
    root = Path(cfg.path)
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    source = detect_source(root) if cfg.source == "auto" else cfg.source
    if source in ("cifar10", "cifar100"):
        return f"dataset: {root}\nlayout: {source} python batches (train, test)\n"
    layout, classes, counts, notes = (_csv if source == "csv" else _folders)(cfg)
    lines = [f"dataset: {root}", f"layout: {layout}", f"classes: {len(classes)}", *_table(classes, counts)]
    if "all" in counts:
        lines.append(f"  no split given: test ({cfg.test_ratio:.0%}) and validation ({cfg.val_ratio:.0%}) are carved "
                     "by class, copies kept on one side")
    elif "test" not in counts:
        lines.append("  no test split given: val is the test split; validation is carved from train by class")
    elif "val" not in counts:
        lines.append(f"  validation ({cfg.val_ratio:.0%} of train) is carved from train by class")
    lines += ["how it was read:", *(f"  - {n}" for n in notes)] if notes else ["how it was read: as is"]
    excluded = f" --set 'data.exclude={list(cfg.exclude)}'" if cfg.exclude else ""
    lines.append(f"train on it: python -m training train {set_path(root)}{excluded}")
    return "\n".join(lines) + "\n"
