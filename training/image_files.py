"""One read of each image file: is it a usable image, its content hash, its size and its perceptual hash.

The content hash identifies the data a run was trained on (training.run_identity) and finds exact copies across
splits; the perceptual hash (imagehash's pHash, 64 bits) finds near-copies (re-encoded, resized) that the content
hash misses (training.data_report).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class FileLimits:
    """What one dataset file may cost the job (data.max_file_bytes, data.max_image_pixels). Training decodes every
    image in full, so memory per file is about 8 bytes a pixel (decoded image and its RGB copy) plus the file."""
    max_bytes: int
    max_pixels: int


def unusable(path: Path, limits: FileLimits) -> str | None:
    """Why a listed file is not opened at all: not a regular file (a named pipe would block the job, a device such
    as /dev/zero never ends), a broken or looping symbolic link, or larger than the byte cap."""
    try:
        st = Path(path).stat()  # follows symbolic links: what would be opened
    except ValueError:  # a NUL in the name (a manifest can hold one)
        return "cannot be read (the name holds a NUL character)"
    except OSError as exc:
        return f"cannot be read ({'broken or looping symbolic link: ' if Path(path).is_symlink() else ''}" \
               f"{exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if st.st_size > limits.max_bytes:
        return f"{st.st_size} bytes, over data.max_file_bytes ({limits.max_bytes})"
    return None


def _read_capped(path: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes: a file that grew after its size was checked cannot inflate memory."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"over data.max_file_bytes ({max_bytes}) when read")
    return data


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    width: int
    height: int
    phash: int  # 64-bit DCT perceptual hash; near-copies differ in a few bits


def _phash(im: Image.Image) -> int:
    return int(str(imagehash.phash(im)), 16)


def inspect(path: Path, limits: FileLimits) -> tuple[FileInfo | None, str | None]:
    """(info, None) if the file decodes fully, else (None, reason). Draft mode keeps JPEG decoding cheap (the pHash
    needs 32x32) but every byte is still read and checked. The pixel cap is checked on the header, before any
    pixel is decoded: a 30000x30000 PNG of a few kilobytes would otherwise cost 3.6 GB here and in every epoch."""
    reason = unusable(path, limits)
    if reason is not None:
        return None, reason
    try:
        data = _read_capped(path, limits.max_bytes)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                return None, (f"{width}x{height} = {width * height} pixels, over data.max_image_pixels "
                              f"({limits.max_pixels}): raise it to train on images this large")
            im.draft("RGB", (64, 64))
            im.load()
            small = ImageOps.exif_transpose(im)  # a rotated copy is still a copy
            return FileInfo(hashlib.sha256(data).hexdigest(), width, height, _phash(small)), None
    except Exception as exc:  # PIL raises many types for bad files; all mean "skip it"
        return None, f"{type(exc).__name__}: {exc}"


def inspect_all(paths: list[Path], limits: FileLimits) -> list[tuple[FileInfo | None, str | None]]:
    # PIL releases the GIL while decoding; one file per core bounds the intake's memory to cores x one file's cost
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: inspect(p, limits), paths))


def inspect_array(array: np.ndarray) -> list[FileInfo]:
    """The same facts for images held in memory (CIFAR rows)."""
    return [FileInfo(hashlib.sha256(np.ascontiguousarray(a).data).hexdigest(), a.shape[1], a.shape[0],
                     _phash(Image.fromarray(a))) for a in array]
