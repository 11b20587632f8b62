"""Segmentation masks published beside the photos (`lesion_01.jpg` and `lesion_01.png` or `lesion_01_mask.png`):
single-channel images of a few values. Read as photos they would teach the model what a mask looks like, so they are
left out of a class folder with a warning."""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .image_files import FileLimits, unusable

MASK_SUFFIX = re.compile(r"[ _.-]*(mask|masks|seg|segmentation|label|labels|gt|annotation)$", re.IGNORECASE)
MASK_MODES = {"1", "L", "P", "I", "I;16", "LA", "PA"}
MAX_VALUES = 16  # a mask holds a few label values (0 and 255, or one per region); a grayscale photo holds hundreds


def _base(stem: str) -> str:
    return MASK_SUFFIX.sub("", stem).lower()


def looks_like_mask(path: Path, limits: FileLimits) -> bool:
    """Single-channel by its header, and at most MAX_VALUES distinct values once decoded (at most the pixel cap)."""
    if unusable(path, limits) is not None:
        return False
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES or im.width * im.height > limits.max_pixels:
                return False
            return im.getchannel(0).getcolors(MAX_VALUES) is not None
    except Exception:  # an unreadable candidate is not a mask; the intake lists it as unreadable
        return False


def find_masks(images: list[Path], limits: FileLimits) -> dict[Path, Path]:
    """mask -> the photo it belongs to, among the image files of one folder. A candidate shares its photo's stem
    (after a `_mask`, `-seg`, `_gt`... suffix is taken off) and is a PNG or BMP; its content confirms it."""
    by_base: dict[str, list[Path]] = {}
    for p in images:
        by_base.setdefault(_base(p.stem), []).append(p)
    found = {}
    for group in by_base.values():
        for p in group:
            if p.suffix.lower() not in (".png", ".bmp"):
                continue
            suffixed = _base(p.stem) != p.stem.lower()
            photos = [q for q in group if q != p and (_base(q.stem) == q.stem.lower() if suffixed else
                                                      q.stem == p.stem)]
            if photos and looks_like_mask(p, limits):
                found[p] = photos[0]
    return found
