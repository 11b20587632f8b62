"""The exported graph's heatmaps are Grad-CAM: onnxruntime's `heatmaps` output against pytorch-grad-cam's GradCAM on
the PyTorch model (gradients by autograd, target layer: the last feature map), for every backbone family, on real
photos. The measure: both maps through pytorch-grad-cam's own normalisation and upsampling to the input size
(ReLU, min-max per image, bilinear), then the largest difference at any pixel, on a 0-1 scale: <= 1e-3.
Variants (fp16, int8) are checked against the fp32 graph's maps by Pearson correlation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import DATA
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from contract.preprocess import PreprocessSpec, load_rgb, resize_crop
from training.config import ModelConfig
from training.data import ImageSet
from training.deletion import occlusion_of, top_class
from training.export import export_onnx
from training.job import heatmaps_of
from training.model import build_model
from training.quantize import quantize
from training.registry import BACKBONES

SIZE = 224
MAX_PIXEL_DIFF = 1e-3
# one backbone per family; efficientnet_lite0 carries real ImageNet weights (they install offline), the others
# random ones (torchvision's files are not on this machine): the parity is the graph's arithmetic either way
FAMILIES = {spec.family: name for name, spec in reversed(BACKBONES.items())}


def photos(n: int) -> np.ndarray:
    """n real photos, ants and bees in turn, as the model's uint8 NHWC input."""
    files = sorted((DATA / "val" / "ants").glob("*.jpg"))[:n // 2] + sorted((DATA / "val" / "bees").glob("*.jpg"))
    spec = PreprocessSpec(256, SIZE, "bilinear")
    return np.stack([resize_crop(load_rgb(f), spec) for f in files[:n]])


def model_for(name: str, hidden_dim: int | None = None, classes: int = 4):
    torch.manual_seed(0)
    weights = "imagenet" if BACKBONES[name].weights is None and name != "small_cnn" else "none"
    return build_model(ModelConfig(backbone=name, weights=weights, dropout=0.0, hidden_dim=hidden_dim),
                       classes).eval()


def onnx_maps(path: Path, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, _, heatmaps, labels = session.run(None, {"images": images, "heatmap_classes": classes})
    return heatmaps, labels


def grad_cam_maps(model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's GradCAM of labels[:, j] for each j: [N, M, S, S]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with GradCAM(model=model, target_layers=[model.backbone.body]) as cam:
        return np.stack([cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels[:, j]])
                         for j in range(labels.shape[1])], axis=1)


def as_grad_cam_scales(heatmaps: np.ndarray, size: int) -> np.ndarray:
    """pytorch-grad-cam's post-processing of a layer's map (scale and upsample, then the multi-layer rescale)."""
    return np.stack([scale_cam_image(scale_cam_image(heatmaps[:, j], (size, size)))
                     for j in range(heatmaps.shape[1])], axis=1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heatmaps_are_grad_cam(family, tmp_path):
    name = FAMILIES[family]
    model, images = model_for(name), photos(4)
    export_onnx(model, tmp_path / "model.onnx", SIZE, 18)
    # the top class, the second, and a fixed class, in one run
    heatmaps, labels = onnx_maps(tmp_path / "model.onnx", images, np.array([[-1, -2, 3]]))
    with torch.no_grad():
        order = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).argsort(1, descending=True)
    assert (labels[:, 0] == order[:, 0].numpy()).all() and (labels[:, 1] == order[:, 1].numpy()).all()
    assert (labels[:, 2] == 3).all()
    reference = grad_cam_maps(model, images, labels)
    ours = as_grad_cam_scales(heatmaps, SIZE)
    assert heatmaps.shape[2:] == tuple(model.backbone.body(torch.zeros(1, 3, SIZE, SIZE)).shape[2:])
    assert reference.max() > 0.99, "degenerate maps compare nothing"
    assert np.abs(ours - reference).max() <= MAX_PIXEL_DIFF


def test_hidden_layer_head_is_grad_cam(tmp_path):
    model, images = model_for("efficientnet_lite0", hidden_dim=32), photos(4)
    export_onnx(model, tmp_path / "model.onnx", SIZE, 18)
    heatmaps, labels = onnx_maps(tmp_path / "model.onnx", images, np.array([[-1, 0]]))
    reference = grad_cam_maps(model, images, labels)
    assert np.abs(as_grad_cam_scales(heatmaps, SIZE) - reference).max() <= MAX_PIXEL_DIFF


def test_heatmaps_are_optional_and_per_image(tmp_path):
    """Only `images`: the contract's outputs as before, no maps; one class per image, or the same for all."""
    model, images = model_for("small_cnn"), photos(3)
    export_onnx(model, tmp_path / "model.onnx", SIZE, 18)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    logits, _, heatmaps, labels = session.run(None, {"images": images})
    assert heatmaps.shape[:2] == (3, 0) and labels.shape == (3, 0)
    per_image = session.run(None, {"images": images, "heatmap_classes": np.array([[2], [-1], [0]])})
    assert per_image[3][:, 0].tolist() == [2, int(logits[1].argmax()), 0]
    same = session.run(None, {"images": images, "heatmap_classes": np.array([[2]])})
    np.testing.assert_allclose(same[2][0], per_image[2][0], rtol=1e-5, atol=1e-7)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of each image's map with the other's, over the positions: [N, M]."""
    a, b = a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1) + 1e-12)


def test_variants_give_the_same_heatmaps(tmp_path):
    """fp16 and int8 graphs answer with heatmaps too; on real photos, ImageNet weights, their maps correlate with
    fp32's: fp16 >= 0.999 on every photo; int8 (activations rounded to 256 levels, calibrated on 16 photos, a random
    head whose classes are close calls) >= 0.9 on average and >= 0.75 on every photo (measured: 0.95, 0.83)."""
    model, images = model_for("efficientnet_lite0"), photos(8)
    export_onnx(model, tmp_path / "model.onnx", SIZE, 18)
    export_onnx(model_for("efficientnet_lite0").half(), tmp_path / "model.fp16.onnx", SIZE, 18, 1.0, torch.float16)
    # 7-bit weights: right on any x86 CPU this test may run on (8-bit ones saturate where AVX2 is all there is)
    quantize(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", photos(16), "minmax", reduce_range=True)
    asked = np.array([[-1]])
    fp32, labels = onnx_maps(tmp_path / "model.onnx", images, asked)
    for variant, mean, least in (("fp16", 0.999, 0.999), ("int8", 0.9, 0.75)):
        maps, variant_labels = onnx_maps(tmp_path / f"model.{variant}.onnx", images, labels)
        assert (variant_labels == labels).all()
        agreement = pearson(maps, fp32)
        assert agreement.mean() >= mean and agreement.min() >= least, (variant, agreement.ravel())


def test_the_reports_maps_are_the_services(tmp_path):
    """report.html's heatmaps (training.job.heatmaps_of, in torch) are what /explain answers from the exported graph
    (onnxruntime): the top class's Grad-CAM, and its occlusion map through the same contract.occlusion."""
    model = model_for("efficientnet_lite0", classes=2)
    images = photos(4)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, SIZE, 18, temperature=1.5)  # the service's probabilities: the fitted temperature
    found = ImageSet(["ants", "bees"], [0, 0, 1, 1], array=images)  # already crops: the transform keeps them
    crops, cams, occlusions = heatmaps_of(model, found, PreprocessSpec(SIZE, SIZE, "bilinear"),
                                          torch.device("cpu"), temperature=1.5)(list(range(4)))
    assert np.array_equal(crops, images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, classes, graph_cams = top_class(session, images)
    np.testing.assert_allclose(cams, graph_cams, atol=MAX_PIXEL_DIFF * np.abs(graph_cams).max())
    served = occlusion_of(session, images, probs, classes, graph_cams.shape[1:])
    assert occlusions.shape == (4, 7, 7) and np.abs(occlusions).max() > 0
    np.testing.assert_allclose(occlusions, served, atol=1e-4)
