"""CSV manifests: one row per image, with configurable path and label columns, an optional path template
(`train/{id}.jpg` for the common `id,breed` form) and an optional split column that is honoured."""
from __future__ import annotations

import csv
import os
import string
from dataclasses import dataclass
from pathlib import Path

from .config import ManifestConfig
from .csv_columns import Columns, detect_columns
from .errors import DataError
from .layouts import SPLIT_NAMES, shown, split_role


@dataclass
class Manifest:
    paths: list[Path]
    labels: list[str]
    roles: list[str] | None  # 'train' | 'val' | 'test' per row where the manifest has a split column
    columns: Columns  # the columns read, given or inferred (training.csv_columns), with a note per inference


def _needed_columns(m: Columns) -> list[str]:
    template_keys = [] if m.path_template is None else [
        name for _, name, _, _ in string.Formatter().parse(m.path_template) if name]
    path_cols = template_keys if m.path_template is not None else [m.path_column]
    return path_cols + [m.label_column] + ([m.split_column] if m.split_column else [])


def _wanted(m: ManifestConfig, header: list[str]) -> Columns:
    """The columns the user set, or whose default name the header has; None where the content must decide."""
    given = m.model_fields_set

    def pick(name: str):
        value = getattr(m, name)
        return value if name in given or value in header else None
    return Columns(path_column=None if m.path_template is not None else pick("path_column"),
                   path_template=m.path_template, label_column=pick("label_column"), split_column=m.split_column)


def _path_of(row: dict, m: Columns, base: Path) -> Path:
    text = m.path_template.format(**row) if m.path_template is not None else row[m.path_column]
    p = Path(text.strip())
    return p if p.is_absolute() else base / p


def _outside(paths: list[Path], base: Path) -> list[int]:
    """Rows whose path leaves the manifest's folder (absolute elsewhere, or ../), judged on the path as written, so a
    linked sub-folder the dataset's owner put there still counts as inside."""
    root = os.path.normpath(os.path.abspath(base))
    return [i for i, p in enumerate(paths)
            if os.path.commonpath([root, os.path.normpath(os.path.abspath(p))]) != root]


def read_manifest(path: Path, m: ManifestConfig, allow_outside: bool = False) -> Manifest:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV file (UTF-8, comma-separated): {exc}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    want = _wanted(m, header)
    missing = [c for c in _needed_columns(want) if c is not None and c not in header]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not in the header ({len(header)} columns: {shown(header)}); "
                        "set data.manifest.path_column / label_column / split_column, or a path_template naming "
                        "columns in braces, or leave them unset to have them found from the content")
    m = detect_columns(path, header, rows, want)
    roles = None
    if m.split_column:
        roles = []
        for i, row in enumerate(rows, start=2):  # line 1 is the header
            role = split_role(row[m.split_column] or "")
            if role is None:
                allowed = ", ".join(n for names in SPLIT_NAMES.values() for n in names)
                raise DataError(f"{path} line {i}: split '{row[m.split_column]}' is not one of {allowed}")
            roles.append(role)
    empty = [i for i, row in enumerate(rows, start=2) if not (row[m.label_column] or "").strip()]
    if empty:
        raise DataError(f"{path}: empty label on line(s) {empty[:10]}; every row needs a {m.label_column}")
    paths = [_path_of(r, m, path.parent) for r in rows]
    outside = [] if allow_outside else _outside(paths, path.parent)
    if outside:
        listed = ", ".join(f"line {i + 2}: {str(paths[i])!r}" for i in outside[:5])
        raise DataError(f"{path}: {len(outside)} row(s) name files outside {path.parent} ({listed}); a manifest reads "
                        "files in its own folder and below. Move the CSV beside the images, or set "
                        "data.allow_outside_paths=true if it names files elsewhere on purpose")
    return Manifest(paths, [r[m.label_column].strip() for r in rows], roles, m)
