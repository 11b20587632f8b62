"""What a batch job scores: the image files of a folder or an object-store prefix (every level below it), or the
files a CSV manifest names.

The listing is sorted and fingerprinted (sha256 of the names in order), so that every shard of a job, and a job
restarted after a crash, cut the same archive into the same parts, and a job whose archive changed under it is told
so instead of mixing two listings in one output.
"""
from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from dataclasses import dataclass

import fsspec

from contract.storage import Place, StorageError, place, translated

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class ArchiveError(ValueError):
    """The input cannot be listed; the message says what to give instead."""


class FileTooLarge(Exception):
    """One file of the archive is over the byte limit: a row with this reason, not the job's end."""


@dataclass(frozen=True)
class Item:
    name: str       # as the output names it: the path under the input folder, or as the CSV wrote it
    location: str   # where to read it, inside the listing's file system


@dataclass(frozen=True)
class Listing:
    source: str
    fs: fsspec.AbstractFileSystem
    items: list[Item]
    not_images: list[str]  # files in the folder whose names are not image names: counted, not scored

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.name.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()

    def read(self, item: Item, max_bytes: int) -> bytes:
        """The file's bytes, fetched as one ranged read of at most max_bytes + 1 (one GET on an object store, as a
        whole read is): a file past max_bytes raises FileTooLarge without being held whole. Anyone who can write to
        the bucket could otherwise stop the job with one 50 GB file named .jpg, held in memory by a decoding
        thread."""
        try:
            data = self.fs.cat_file(item.location, start=0, end=max_bytes + 1)
        except OSError:
            if self.fs.size(item.location) == 0:  # S3 answers a ranged read of an empty object 416, not b""
                return b""
            raise
        if len(data) > max_bytes:
            raise FileTooLarge(f"the file is over {max_bytes} bytes (--max-image-bytes); not read further")
        return data


def _is_image(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_folder(where: Place) -> Listing:
    """Every file below the folder or prefix, hidden ones (a dot in any part of the name) left out."""
    root = where.root.rstrip("/")
    with translated(where.url):
        found = where.fs.find(root)  # an object store's listing, page after page
    names = sorted(posixpath.relpath(p, root) for p in found)
    names = [n for n in names if not any(part.startswith(".") for part in n.split("/"))]
    return Listing(where.url, where.fs, [Item(n, f"{root}/{n}") for n in names if _is_image(n)],
                   [n for n in names if not _is_image(n)])


def list_csv(where: Place, column: str, template: str | None = None, allow_outside: bool = False) -> Listing:
    """A CSV with a header: `column` names each file, or `template` builds its name from the row's columns (as
    training's data.manifest.path_template: 'train/{id}.jpg'); relative to the CSV's folder. A row naming a file
    outside that folder (an absolute path elsewhere, a ../) stops the listing unless allow_outside: a manifest is
    data, and a job reading files its author never meant to share would publish their digests."""
    with translated(where.url):
        text = where.fs.cat_file(where.root).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if template is None and column not in columns:
        raise ArchiveError(f"{where.url}: no column '{column}' (columns: {columns}); name the column of "
                           "file paths with --path-column, or build the path with --path-template")
    try:
        names = sorted({n for row in reader if (n := template.format_map(row) if template else row[column])})
    except KeyError as exc:
        raise ArchiveError(f"{where.url}: --path-template {template!r} names the column {exc}, which the CSV does "
                           f"not have (columns: {columns})") from None
    except (ValueError, IndexError) as exc:
        raise ArchiveError(f"--path-template {template!r}: {exc} (write columns as {{name}})") from None
    base = posixpath.dirname(where.root)
    outside = [n for n in names if not posixpath.normpath(posixpath.join(base, n)).startswith(base.rstrip("/") + "/")]
    if outside and not allow_outside:
        raise ArchiveError(f"{where.url}: {len(outside)} rows name files outside the CSV's folder {base} (e.g. "
                           f"{outside[:3]}); move the CSV up, or give --allow-outside-paths if they are meant")
    return Listing(where.url, where.fs, [Item(n, posixpath.join(base, n)) for n in names], [])


def list_input(source: str, path_column: str = "path", path_template: str | None = None,
               allow_outside: bool = False) -> Listing:
    where = place(source)
    with translated(source):
        is_dir, is_file = where.fs.isdir(where.root), where.fs.isfile(where.root)
    if is_dir:
        listing = list_folder(where)
    elif is_file and where.root.lower().endswith(".csv"):
        listing = list_csv(where, path_column, path_template, allow_outside)
    elif is_file:
        raise ArchiveError(f"--input {source}: give a folder of images or a CSV manifest (.csv)")
    else:
        raise ArchiveError(f"--input {source} does not exist")
    if not listing.items:
        raise ArchiveError(f"--input {source}: no image files there ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return listing


__all__ = ["ArchiveError", "FileTooLarge", "Item", "Listing", "StorageError", "list_input"]
