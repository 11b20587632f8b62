"""The contract's PIL/numpy preprocessing (the service's, and training's evaluation) equals torchvision's Resize +
CenterCrop, the reference of torchvision's weights and references/classification, pixel for pixel."""
import io

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import v2

from contract.preprocess import ImageError, PreprocessSpec, load_rgb, preprocess
from training.transforms import INTERPOLATION
from training.transforms import eval_transform as training_eval


def eval_transform(resize: int, size: int, interp: str) -> v2.Compose:
    """torchvision's own evaluation preprocessing: the reference."""
    return v2.Compose([v2.Resize(resize, interpolation=INTERPOLATION[interp]), v2.CenterCrop(size), v2.PILToTensor()])


@pytest.mark.parametrize("resize, size, interp", [(256, 224, "bilinear"), (73, 64, "bicubic"), (160, 128, "nearest")])
def test_identical_pixels_on_real_photos(data_dir, resize, size, interp):
    files = sorted((data_dir / "val" / "ants").iterdir())[:12] + sorted((data_dir / "val" / "bees").iterdir())[:12]
    tf = eval_transform(resize, size, interp)
    spec = PreprocessSpec(resize, size, interp)
    for f in files:
        ref = tf(load_rgb(f)).permute(1, 2, 0).numpy()
        got = preprocess(f.read_bytes(), spec, max_pixels=10**9)
        assert got.dtype == np.uint8 and got.shape == (size, size, 3)
        assert np.array_equal(ref, got), f"{f.name}: max diff {np.abs(ref.astype(int) - got).max()}"
        trained_on = training_eval(resize, size, interp)(load_rgb(f)).permute(1, 2, 0).numpy()
        assert np.array_equal(trained_on, got), "training's evaluation must see the service's pixels"


def _encode(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                                       ("RGB", "WEBP"), ("RGB", "BMP"), ("I;16", "PNG")])
def test_modes_are_converted_like_training(tmp_path, data_dir, mode, fmt):
    photo = Image.open(sorted((data_dir / "val" / "bees").iterdir())[0]).convert("RGB").resize((90, 70))
    im = photo.convert(mode) if mode != "I;16" else photo.convert("L").convert("I;16")
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_encode(im, fmt))
    spec = PreprocessSpec(64, 56, "bilinear")
    ref = eval_transform(64, 56, "bilinear")(load_rgb(path)).permute(1, 2, 0).numpy()
    assert np.array_equal(preprocess(path.read_bytes(), spec, 10**9), ref)


def test_exif_orientation_is_applied(data_dir):
    photo = Image.open(sorted((data_dir / "val" / "ants").iterdir())[0]).convert("RGB").resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode(photo, "PNG", exif=exif.tobytes())  # lossless, so the comparison can be exact
    out = preprocess(data, PreprocessSpec(80, 80, "bilinear"), 10**9)
    upright = preprocess(_encode(photo.transpose(Image.Transpose.ROTATE_270), "PNG"),
                         PreprocessSpec(80, 80, "bilinear"), 10**9)
    assert np.array_equal(out, upright)


def test_pixel_limit_is_checked_before_decoding():
    data = _encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageError) as err:
        preprocess(data, PreprocessSpec(64, 64, "bilinear"), max_pixels=1_000_000)
    assert err.value.status == 413 and "25000000 pixels" in str(err.value)
