"""Bytes or a file -> the model's input: decode, EXIF-orient, convert to RGB, resize shorter side to R, centre-crop S.

The one implementation of the preprocessing contract (model.json: resize_size, image_size, interpolation): the
service, the skew gate, training's evaluation and `python -m training predict` all call it. It equals torchvision's
Resize + CenterCrop on PIL images pixel for pixel (same size arithmetic, same PIL resampling call, same crop
rounding); tests/serving/test_preprocess_parity.py holds the two equal on real photos.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RequestError

INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                 "bicubic": Image.Resampling.BICUBIC}
ORIENTATION = 0x0112  # the EXIF tag
FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
MAX_FULL_RESIZE_ASPECT = 4  # longer side / shorter side up to which the whole picture is resized before the crop


class ImageError(RequestError):
    """A request image that cannot be used (unreadable, or over a limit)."""


class PixelBudget:
    """Decoded pixels a request may still cost (max_request_pixels): the work of a many-image request is bounded as a
    whole, not only image by image. Taken before each decode, so an over-budget image is never decoded."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def take(self, pixels: int) -> None:
        if pixels > self.left:
            raise ImageError("too_many_pixels", f"the request's images decode to more than {self.limit} pixels in all "
                             f"(max_request_pixels); send fewer or smaller images per request", 413)
        self.left -= pixels


@dataclass(frozen=True)
class PreprocessSpec:
    resize_size: int
    image_size: int
    interpolation: str


def decode(data: bytes, max_pixels: int, min_side: int | None = None,
           budget: PixelBudget | None = None) -> tuple[Image.Image, tuple[float, float]]:
    """RGB image of the bytes, after the checks a request needs, and the whole picture's extent in its pixels.

    With min_side, a JPEG is decoded by libjpeg's DCT scaling at 1/2, 1/4 or 1/8 of its size where its shorter side
    stays >= min_side: a 12 MP phone photo bound for a 256 px resize is decoded at 1/4 (a sixteenth of the work).
    The reduced image is ceil(W/s) x ceil(H/s) pixels for a picture of W/s x H/s: the extent says which, so the
    resize reads exactly the picture and the geometry is the full decode's (tests/serving/test_preprocess_parity.py).

    max_pixels bounds the pixels actually decoded (after DCT scaling), checked on the header before any is: memory
    is at most about 8 bytes a pixel (the decoded image and its RGB copy) and time about 30 ns a pixel (PNG, RGBA).
    PIL's own decompression-bomb check (on the file's header size, 2 x Image.MAX_IMAGE_PIXELS) still applies first.
    """
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "the bytes are not an image format this service reads "
                         f"({', '.join(sorted(FORMATS))})", 415) from None
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"the image is too large to decode: {exc}", 413) from None
    except Exception as exc:
        raise ImageError("corrupt", f"the image header cannot be read: {exc}") from None
    if im.format not in FORMATS:
        raise ImageError("unsupported_format", f"image format {im.format} is not supported; send one of "
                         f"{', '.join(sorted(FORMATS))}", 415)
    w, h = im.size
    extent = (float(w), float(h))
    if min_side and im.format in ("JPEG", "MPO") and min(w, h) >= 2 * min_side:
        factor = min(w, h) / min_side
        _, box = im.draft(None, (math.ceil(w / factor), math.ceil(h / factor)))
        extent = (box[2], box[3])
    dw, dh = im.size  # after draft: what will be decoded
    if dw * dh > max_pixels:  # checked on the header: a decompression bomb never gets decoded
        raise ImageError("too_many_pixels", f"image is {w}x{h} and decodes to {dw}x{dh} = {dw * dh} pixels, over "
                         f"the limit of {max_pixels} (max_image_pixels)", 413)
    if budget is not None:
        budget.take(dw * dh)
    if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # exif_transpose turns it by 90 degrees
        extent = extent[::-1]
    try:
        return to_rgb(im), extent  # forces the full decode: truncation shows up here
    except Exception as exc:
        raise ImageError("corrupt", f"the image is truncated or corrupt: {exc}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """EXIF orientation applied (phone photos), any mode converted to RGB. In place on the freshly opened image: the
    copying forms (exif_transpose's copy, convert's copy of an RGB image) cost two full-size copies per request."""
    ImageOps.exif_transpose(im, in_place=True)  # decodes every byte first: a truncated file fails here
    return im if im.mode == "RGB" else im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """A training or test image file, decoded as the service decodes a request."""
    with Image.open(path) as im:
        return to_rgb(im)


def resized_size(w: float, h: float, resize_size: int) -> tuple[int, int]:
    """torchvision's Resize(R) size arithmetic: the shorter side becomes R, the longer keeps the ratio (truncated)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_size, int(resize_size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_crop(im: Image.Image, spec: PreprocessSpec, extent: tuple[float, float] | None = None) -> np.ndarray:
    """RGB uint8 [S, S, 3], as torchvision's Resize(R) then CenterCrop(S) computes it. extent: the picture's size
    in im's pixels where it is not im.size (a reduced JPEG decode, see decode); W/s : H/s is exactly W : H, so the
    sizes come out as from the full image.

    Past an aspect ratio of MAX_FULL_RESIZE_ASPECT only the crop is computed (a 65000x1 strip would resize to
    16.6 million x 256 pixels): PIL resamples the box of the source that the crop covers at the full resize's scale,
    with its filter window clipped to the whole source as in the full resize. Its pixels differ from the full
    resize's by float rounding only (at most 1 level, tested), which is why photos keep the full resize."""
    w, h = extent if extent is not None else im.size
    new_w, new_h = resized_size(w, h, spec.resize_size)
    s = spec.image_size
    left, top = int(round((new_w - s) / 2.0)), int(round((new_h - s) / 2.0))
    interpolation = INTERPOLATION[spec.interpolation]
    if max(new_w, new_h) > MAX_FULL_RESIZE_ASPECT * spec.resize_size:
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        return np.asarray(im.resize((s, s), interpolation, box=box), dtype=np.uint8)
    if (new_w, new_h) != im.size or extent is not None:
        im = im.resize((new_w, new_h), interpolation, box=(0, 0, w, h))
    return np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.uint8)


def draft_side(spec: PreprocessSpec) -> int:
    """The smallest shorter side a JPEG is decoded at: twice the resize target, so the antialiased resize still
    averages at least 2x2 decoded pixels into each output pixel."""
    return 2 * spec.resize_size


def preprocess(data: bytes, spec: PreprocessSpec, max_pixels: int, budget: PixelBudget | None = None) -> np.ndarray:
    """The model's input from an image file's bytes: what the service, the skew gate, training's evaluation and
    `python -m training predict` all compute."""
    im, extent = decode(data, max_pixels, draft_side(spec), budget)
    return resize_crop(im, spec, extent)
