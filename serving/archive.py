"""What a batch job scores: the image files of a folder (every level below it), or the files a CSV manifest names.

The listing is sorted and fingerprinted (sha256 of the names in order), so that every shard of a job, and a job
restarted after a crash, cut the same archive into the same parts, and a job whose archive changed under it is told
so instead of mixing two listings in one output.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class ArchiveError(ValueError):
    """The input cannot be listed; the message says what to give instead."""


@dataclass(frozen=True)
class Item:
    name: str       # as the output names it: the path under the input folder, or as the CSV wrote it
    location: Path  # where to read it


@dataclass(frozen=True)
class Listing:
    source: str
    items: list[Item]
    not_images: list[str]  # files in the folder whose names are not image names: counted, not scored

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.name.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


def list_folder(root: Path) -> Listing:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                        p.relative_to(root).parts))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return Listing(str(root), [Item(p.relative_to(root).as_posix(), p) for p in images],
                   [p.relative_to(root).as_posix() for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def list_csv(path: Path, column: str) -> Listing:
    """A CSV with a header: `column` names each file, relative to the CSV's folder (or absolute)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ArchiveError(f"{path}: no column '{column}' (columns: {reader.fieldnames}); name the column of "
                               "file paths with --path-column")
        names = [row[column] for row in reader if row[column]]
    base = path.parent
    return Listing(str(path), [Item(n, base / n) for n in sorted(set(names))], [])


def list_input(source: Path, path_column: str = "path") -> Listing:
    if source.is_dir():
        listing = list_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        listing = list_csv(source, path_column)
    elif source.exists():
        raise ArchiveError(f"--input {source}: give a folder of images or a CSV manifest (.csv)")
    else:
        raise ArchiveError(f"--input {source} does not exist")
    if not listing.items:
        raise ArchiveError(f"--input {source}: no image files there ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return listing
