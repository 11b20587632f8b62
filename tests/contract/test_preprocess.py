"""The contract's PIL/numpy preprocessing (the service's, and training's evaluation) equals torchvision's Resize +
CenterCrop, the reference of torchvision's weights and references/classification, pixel for pixel."""
import io

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import v2

from contract.preprocess import ImageError, PreprocessSpec, draft_side, load_rgb, preprocess
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
        got = preprocess(f.read_bytes(), spec, max_pixels=10**9)
        assert got.dtype == np.uint8 and got.shape == (size, size, 3)
        trained_on = training_eval(spec)(f.read_bytes()).permute(1, 2, 0).numpy()
        assert np.array_equal(trained_on, got), "training's evaluation must see the service's pixels"
        ref = tf(load_rgb(f)).permute(1, 2, 0).numpy().astype(int)  # torchvision on a full decode
        if min(Image.open(f).size) < 2 * draft_side(spec):  # decoded in full: torchvision's pixels exactly
            assert np.array_equal(ref, got), f"{f.name}: max diff {np.abs(ref - got).max()}"
        else:  # decoded at 1/2 or less by libjpeg's DCT scaling, then the same antialiased resize
            diff = np.abs(ref - got)  # seen: mean <= 1.2, max <= 8 levels of 255
            assert diff.mean() <= 1.5 and diff.max() <= 12, f"{f.name}: mean {diff.mean():.2f}, max {diff.max()}"


def _large(photo, stored_sideways: bool = False) -> bytes:
    """A real photo re-encoded at 12 MP, as a phone sends it; or stored turned by 90 degrees with the EXIF
    orientation (6: turn 90 degrees clockwise to display) that puts it upright again, as phones store portraits."""
    big = Image.open(photo).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    if not stored_sideways:
        return _encode(big, "JPEG", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(big.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())


@pytest.mark.parametrize("resize, size", [(256, 224), (73, 64)])
def test_phone_size_photos_decode_reduced_and_stay_identical_between_training_and_serving(data_dir, resize, size):
    spec = PreprocessSpec(resize, size, "bilinear")
    photo = sorted((data_dir / "val" / "bees").iterdir())[0]
    data = _large(photo)
    got = preprocess(data, spec, max_pixels=10**9)
    trained_on = training_eval(PreprocessSpec(resize, size, "bilinear"))(data).permute(1, 2, 0).numpy()
    assert np.array_equal(trained_on, got)
    ref = eval_transform(resize, size, "bilinear")(load_rgb(io.BytesIO(data))).permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ref - got)
    assert diff.mean() <= 0.5 and diff.max() <= 6, (diff.mean(), diff.max())  # DCT scaling vs a full decode
    rotated = preprocess(_large(photo, stored_sideways=True), spec, max_pixels=10**9)
    assert rotated.shape == got.shape and np.abs(rotated.astype(int) - got).mean() <= 0.5, \
        "an EXIF-rotated phone photo must come out upright"


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
