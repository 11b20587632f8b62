"""One read of each image file: is it a usable image, its content hash, its size and its perceptual hash.

The content hash identifies the data a run was trained on (training.run_identity) and finds exact copies across
splits; the perceptual hash (imagehash's pHash, 64 bits) finds near-copies (re-encoded, resized) that the content
hash misses (training.data_report).
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    width: int
    height: int
    phash: int  # 64-bit DCT perceptual hash; near-copies differ in a few bits


def _phash(im: Image.Image) -> int:
    return int(str(imagehash.phash(im)), 16)


def inspect(path: Path) -> tuple[FileInfo | None, str | None]:
    """(info, None) if the file decodes fully, else (None, reason). Draft mode keeps JPEG decoding cheap (the pHash
    needs 32x32) but every byte is still read and checked."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            im.draft("RGB", (64, 64))
            im.load()
            small = ImageOps.exif_transpose(im)  # a rotated copy is still a copy
            return FileInfo(hashlib.sha256(data).hexdigest(), width, height, _phash(small)), None
    except Exception as exc:  # PIL raises many types for bad files; all mean "skip it"
        return None, f"{type(exc).__name__}: {exc}"


def inspect_all(paths: list[Path]) -> list[tuple[FileInfo | None, str | None]]:
    with ThreadPoolExecutor(max_workers=8) as pool:  # PIL releases the GIL while decoding
        return list(pool.map(inspect, paths))


def inspect_array(array: np.ndarray) -> list[FileInfo]:
    """The same facts for images held in memory (CIFAR rows)."""
    return [FileInfo(hashlib.sha256(np.ascontiguousarray(a).data).hexdigest(), a.shape[1], a.shape[0],
                     _phash(Image.fromarray(a))) for a in array]
