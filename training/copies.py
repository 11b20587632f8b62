"""Copies of one picture within a dataset: exact (same file content) and near (re-encoded, resized, brightened).

A 64-bit pHash within data.near_duplicate_bits bits proposes a near copy; a second, stricter measure confirms it,
because the pHash keeps only the lowest frequencies: two white leaf silhouettes of different species, or two scans
of the same kind, share them. The confirmation compares the pixels at the smaller image's resolution (at most
CONFIRM_SIDE), each standardised to zero mean and unit variance after a 1-pixel blur: a copy differs by noise
everywhere, a different picture by a whole region. Measured on 300 re-encoded, resized and brightened copies of the
hymenoptera photos against 21 pHash-colliding silhouettes (tests/training/test_copies.py): copies at most 0.02 % of
pixels over one standard deviation apart, distinct silhouettes at least 0.34 %; the threshold sits between.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter, ImageOps

CONFIRM_SIDE = 128
CONFIRM_DIFF = 1.0  # standard deviations: a pixel this far apart belongs to another picture, not to noise
CONFIRM_SHARE = 0.001  # at most this share of such pixels for a copy
CHUNK = 4_000_000  # pHash distances computed at once (bytes: 8x this)
NEAREST = 3  # candidates confirmed per image: the work stays linear in images, whatever the data


def thumbnail(source: bytes | Image.Image) -> Image.Image:
    """Grayscale, upright (EXIF), decoded at a reduced size where the format allows (JPEG draft)."""
    im = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    im.draft("L", (2 * CONFIRM_SIDE, 2 * CONFIRM_SIDE))
    return ImageOps.exif_transpose(im).convert("L")


def _standardised(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    a = np.asarray(im.resize(size, Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


def same_picture(a: Image.Image, b: Image.Image) -> bool:
    """The second measure: at the smaller image's resolution, at most CONFIRM_SHARE of pixels differ by more than
    CONFIRM_DIFF standard deviations."""
    size = (min(a.width, b.width, CONFIRM_SIDE), min(a.height, b.height, CONFIRM_SIDE))
    far = np.abs(_standardised(a, size) - _standardised(b, size)) > CONFIRM_DIFF
    return float(far.mean()) <= CONFIRM_SHARE


def close_pairs(ha: np.ndarray, hb: np.ndarray, bits: int, same: bool) -> Iterator[tuple[int, list[int], list[int]]]:
    """For each image i of a: (i, the images of b within `bits` pHash bits, nearest first, at most NEAREST of them,
    their distances). `same`: a and b are one set, and only earlier images are i's candidates (each pair once).
    Distances are computed in chunks of CHUNK, so memory stays bounded whatever the sizes."""
    step = max(1, CHUNK // max(1, len(hb)))
    cols = np.arange(len(hb))
    for start in range(0, len(ha), step):
        dist = np.bitwise_count(ha[start:start + step, None] ^ hb[None, :]).astype(np.int16)
        if same:
            dist[cols[None, :] >= (start + np.arange(len(dist)))[:, None]] = 99
        for r in np.nonzero((dist <= bits).any(axis=1))[0]:
            near = np.nonzero(dist[r] <= bits)[0]
            near = near[np.argsort(dist[r, near], kind="stable")][:NEAREST]
            yield start + int(r), near.tolist(), dist[r, near].tolist()


Source = Callable[[int], "bytes | Image.Image"]


def thumbnails(source: Source) -> Callable[[int], Image.Image | None]:
    """Each image's thumbnail, decoded once (the last 4096 kept)."""
    return lru_cache(maxsize=4096)(lambda i: _safe_thumbnail(source, i))


class Confirmer:
    """Confirms candidate pairs (i of a, j of b) with `same_picture`, from cached thumbnails; counts rejections."""

    def __init__(self, thumb_a: Callable[[int], Image.Image | None], thumb_b: Callable[[int], Image.Image | None]):
        self.a, self.b = thumb_a, thumb_b
        self.rejected = 0

    def __call__(self, i: int, j: int) -> bool:
        a, b = self.a(i), self.b(j)
        ok = a is not None and b is not None and same_picture(a, b)
        self.rejected += not ok
        return ok

    def confirm_all(self, candidates: list[tuple[int, list[int], list[int]]]) -> list[tuple[int, int, int]]:
        """(i, j, bits) for the nearest confirmed candidate j of each i, if any."""
        def first(c):
            i, js, ds = c
            return next(((i, j, d) for j, d in zip(js, ds) if self(i, j)), None)
        with ThreadPoolExecutor(max_workers=2) as pool:  # PIL releases the GIL while it decodes and resizes
            return [r for r in pool.map(first, candidates) if r is not None]


def _safe_thumbnail(source: Source, i: int) -> Image.Image | None:
    try:
        return thumbnail(source(i))
    except Exception:  # it decoded at intake; a file changed since is not a copy of anything
        return None


def near_links(hashes: np.ndarray, bits: int, source: Source) -> list[tuple[int, int]]:
    """Confirmed near copies within one set, as (i, j) links (each image to its nearest earlier confirmed copy)."""
    thumbs = thumbnails(source)
    confirmer = Confirmer(thumbs, thumbs)
    return [(i, j) for i, j, _ in confirmer.confirm_all(list(close_pairs(hashes, hashes, bits, same=True)))]


def groups(n: int, links: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of n items under `links`, each sorted, ordered by their first item."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for i, j in links:
        parent[find(i)] = find(j)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return sorted(out.values(), key=lambda g: g[0])
