"""Which columns of a CSV name the images, their labels and their split, when the user has not said.

Kaggle-style CSVs name the image by an id without extension (`id,species`, files at `images/<id>.jpg`), carry
numeric feature columns, and sit beside an unlabelled test CSV and a sample submission. The image column is the one
whose values resolve to files under the CSV's folder (directly or one folder down, with or without an image
extension); the label column holds text with repeated values; a column of train / val / test values is the split.
What cannot be decided stops with the two or three likely columns and the `--set` for each, never the whole header.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .image_files import IMAGE_SUFFIXES
from .layouts import shown, split_role

SAMPLE = 200  # rows looked at to decide; the whole CSV is checked when it is read
PROBE = 3  # values of each column tried against every path form before the sample confirms one
LABEL_NAMES = re.compile(r"^(label|labels|class|classes|category|species|breed|diagnosis|target|y|dx|type|"
                         r"class_?name|label_?name)$", re.IGNORECASE)
EXTENSIONS = sorted(IMAGE_SUFFIXES) + sorted(s.upper() for s in IMAGE_SUFFIXES)


@dataclass
class Columns:
    path_column: str | None = None
    path_template: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    notes: list[str] = field(default_factory=list)


def _forms(base: Path) -> list[str]:
    """Path forms a value may take, `{}` standing for it: as written, with an extension, one folder down."""
    subs = [""] + sorted(d.name + "/" for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))[:50]
    return [f"{s}{{}}{e}" for s in subs for e in ("", *EXTENSIONS)]


def _image_column(header: list[str], rows: list[dict], base: Path) -> tuple[str, str, float] | None:
    """(column, form, share of sampled rows that resolve) for the best column, or None if none resolves."""
    forms, best = _forms(base), None
    for col in header:
        probe = [r[col] for r in rows[:PROBE] if r.get(col)]
        for form in forms:
            if probe and all((base / form.format(v.strip())).is_file() for v in probe):
                share = sum((base / form.format((r.get(col) or "").strip())).is_file() for r in rows) / len(rows)
                if best is None or share > best[2]:
                    best = (col, form, share)
                break
    return best


def _numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def _label_candidates(header: list[str], rows: list[dict], taken: set[str]) -> list[tuple[str, int]]:
    """(column, distinct values) for text columns with repeated values, likely first (a label-like name, then fewer
    distinct values)."""
    found = []
    for col in header:
        values = [(r.get(col) or "").strip() for r in rows]
        distinct = len(set(values))
        if col in taken or not all(values) or _numeric(values) or not 2 <= distinct <= max(2, len(values) // 2):
            continue
        found.append((col, distinct))
    return sorted(found, key=lambda c: (not LABEL_NAMES.match(c[0]), c[1]))


def _split_column(header: list[str], rows: list[dict]) -> str | None:
    for col in header:
        roles = {split_role(r.get(col) or "") for r in rows}
        if None not in roles and len(roles) >= 2:
            return col
    return None


def detect_columns(path: Path, header: list[str], rows: list[dict], want: Columns) -> Columns:
    """Fill what `want` leaves None from the CSV's content, with a note for every column inferred."""
    sample, base, out = rows[:SAMPLE], path.parent, Columns(**want.__dict__)
    out.notes = []
    if out.path_column is None and out.path_template is None:
        found = _image_column(header, sample, base)
        if found is None or found[2] < 0.8:
            raise DataError(f"{path}: no column names image files under {base} (as written, with an image extension "
                            f"or one folder down); columns: {shown(header)}. Set data.manifest.path_column, or "
                            "data.manifest.path_template such as 'images/{id}.jpg'")
        col, form, share = found
        if form == "{}":
            out.path_column = col
        else:
            out.path_template = form.replace("{}", "{" + col + "}")
        out.notes.append(f"{path.name}: images from column '{col}'"
                         + (f" as {out.path_template}" if out.path_template else "")
                         + f" ({share:.0%} of the first {len(sample)} rows name a file)")
    image_cols = {out.path_column} | set(re.findall(r"{(\w+)}", out.path_template or ""))
    if out.split_column is None:
        out.split_column = _split_column([c for c in header if c not in image_cols], sample)
        if out.split_column:
            out.notes.append(f"{path.name}: the split of each row from column '{out.split_column}' (train / val / "
                             "test values)")
    if out.label_column is None:
        out.label_column = _choose_label(path, header, sample, image_cols | {out.split_column})
        out.notes.append(f"{path.name}: labels from column '{out.label_column}'")
    return out


def _choose_label(path: Path, header: list[str], sample: list[dict], taken: set) -> str:
    cands = _label_candidates(header, sample, taken)
    if not cands:
        siblings = sorted(p.name for p in path.parent.glob("*.csv") if p != path)
        raise DataError(f"{path}: no label column (text with repeated values) among {shown(header)}: it looks "
                        "unlabelled, like a test list or a sample submission"
                        + (f"; the labelled CSV may be one of {shown(siblings)} beside it" if siblings else "")
                        + ". Point data.path at the labelled CSV, or set data.manifest.label_column")
    if len(cands) == 1 or LABEL_NAMES.match(cands[0][0]) and not LABEL_NAMES.match(cands[1][0]):
        return cands[0][0]
    options = "; ".join(f"'{c}' ({n} distinct values, e.g. {sample[0][c]!r}): --set data.manifest.label_column={c}"
                        for c, n in cands[:3])
    raise DataError(f"{path}: more than one column could be the label; likely first: {options}")
