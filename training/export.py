"""Checkpoint -> published artifact: ONNX with the uint8 NHWC contract (contract/card.py), parity-checked against
PyTorch, re-scored through the service's own preprocessing (skew gate), described by model.json, published
atomically."""
from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

from contract.card import ModelCard, SkewCheck, SkewGate, Variant
from contract.files import sha256_of
from contract.precision import INT8_VARIANTS
from contract.publish import install

from .backbones import Pooled
from .cam import grad_cam, resolve_classes, score_gradients
from .data import ImageSet
from .final_model import FinalModel
from .log import event
from .publish import GateLimits, PublishRefused, gate, promote
from .quantize import Int8Plan, export_int8

PARITY_ATOL = 1e-3
# fp16 keeps ~3 significant digits; logits of a few units move by up to ~0.02 (measured on real photos).
FP16_ATOL, FP16_MIN_AGREEMENT = 5e-2, 0.99


class ExportError(RuntimeError):
    pass


class ContractWrapper(torch.nn.Module):
    """uint8 [N,S,S,3] RGB (+ heatmap_classes [N,M]) -> (logits, probabilities, heatmaps, heatmap_labels).
    /255, the backbone's normalisation and the NHWC->NCHW change live in the graph (`normalized`); the heatmaps
    are training.cam's Grad-CAM of the requested classes (an index, or -r for the r-th most likely), float32
    [N, M, h, w] at the last feature map's resolution."""

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.temperature, self.dtype = model, temperature, dtype

    def forward(self, images: torch.Tensor, heatmap_classes: torch.Tensor | None = None):
        feature_map = self.model.backbone.body(self.normalized(images))
        pooled = Pooled.pool(feature_map)
        logits = self.model.head(pooled).float()  # the contract's outputs stay float32 whatever the compute precision
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        if heatmap_classes is None:
            return logits, probabilities
        labels = resolve_classes(heatmap_classes, logits)
        # float32 whatever the compute precision: onnxruntime's CPU Einsum has no float16 kernel
        gradients = score_gradients(self.model.head, pooled, labels).float()
        return logits, probabilities, grad_cam(feature_map.float(), gradients), labels

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> the backbone's input: float NCHW, (x / 255 - mean) / std as one scale and one shift, applied
        before the layout change and tiled over the width. onnxruntime broadcasts a per-channel constant over NHWC
        in 3-element spans (1.8 ms a Sub at batch 8 on the Xeon, 10x the same op on NCHW), and in the int8 graph its
        layout optimizer moves the normalisation to NHWC, where the quantized convolutions run: there its ops
        cost 18 % of the model (bench/RESULTS.md, 2026-12-01). A [1, 1, W, 3] constant gives spans of
        3W in either layout."""
        width = images.shape[2]
        mean, std = self.model.mean.view(3), self.model.std.view(3)
        scale = (1 / (255 * std)).repeat(width).view(1, 1, width, 3).to(self.dtype)
        shift = (-mean / std).repeat(width).view(1, 1, width, 3).to(self.dtype)
        return (images.to(self.dtype) * scale + shift).permute(0, 3, 1, 2)


def export_onnx(model: torch.nn.Module, path: Path, image_size: int, opset: int, temperature: float = 1.0,
                dtype: torch.dtype = torch.float32) -> None:
    wrapper = ContractWrapper(model.eval(), temperature, dtype).eval()
    example = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    classes = torch.tensor([[-1, 0], [-1, 0]])
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example, classes), str(path), input_names=["images", "heatmap_classes"],
                          output_names=["logits", "probabilities", "heatmaps", "heatmap_labels"],
                          opset_version=opset, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={"images": {0: batch},
                                          "heatmap_classes": {0: batch, 1: torch.export.Dim("maps", max=4096)}})
    heatmap_classes_optional(path)
    onnx.checker.check_model(str(path), full_check=True)


def heatmap_classes_optional(path: Path) -> None:
    """Make `heatmap_classes` an input one may leave out: it gets a default ([1, 0]: no heatmaps, nothing computed
    for them) and is broadcast to the batch, so a caller that sends only `images` (every reader of the contract
    before heatmaps) runs the model as before, and [1, M] asks the same classes of every image.
    onnxruntime runs every node whatever outputs are fetched; with M = 0 the heatmap branch is empty tensors."""
    model = onnx.load(str(path))
    graph, name, inside = model.graph, "heatmap_classes", "heatmap_classes_per_image"
    for node in graph.node:
        node.input[:] = [inside if i == name else i for i in node.input]
    h = onnx.helper
    graph.node.insert(0, h.make_node("Shape", ["images"], ["heatmap_batch"], start=0, end=1))
    graph.node.insert(1, h.make_node("Concat", ["heatmap_batch", "heatmap_one"], ["heatmap_target"], axis=0))
    graph.node.insert(2, h.make_node("Expand", [name, "heatmap_target"], [inside]))
    graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros((1, 0), np.int64), name),
                              onnx.numpy_helper.from_array(np.ones(1, np.int64), "heatmap_one")])
    dims = next(i for i in graph.input if i.name == name).type.tensor_type.shape.dim
    dims[0].dim_param = "heatmap_batch"  # 1 or the images' batch
    onnx.save(model, str(path))


def ort_session(path: Path):
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort
    opts = ort.SessionOptions()
    # errors only: onnxruntime warns at every load that `heatmap_classes` (an input with a default, on purpose:
    # heatmap_classes_optional) "will not be treated as constant"
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(model: torch.nn.Module, path: Path, images: np.ndarray, batch_sizes=(1, 8, 5)) -> dict:
    """onnxruntime vs eager on real images (uint8 NHWC) at several batch sizes; raises with the numbers."""
    session = ort_session(path)
    report = {}
    model.eval()
    for bs in batch_sizes:
        batch = images[:bs] if len(images) >= bs else np.resize(images, (bs, *images.shape[1:]))
        ort_logits = session.run(["logits"], {"images": batch})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0).numpy()
        delta = float(np.abs(ort_logits - ref).max())
        same = bool((ort_logits.argmax(1) == ref.argmax(1)).all())
        report[f"batch_{bs}"] = {"max_abs_diff": delta, "argmax_equal": same}
        if delta > PARITY_ATOL or not same:
            raise ExportError(f"ONNX parity failed at batch {bs}: max |dlogit| = {delta:.2e} "
                              f"(limit {PARITY_ATOL}), argmax equal on all images: {same}")
    return report


def export_fp16(model: torch.nn.Module, staging: Path, image_size: int, opset: int, temperature: float,
                images: np.ndarray) -> Variant:
    """model.fp16.onnx for GPUs: half the weights' bytes, tensor-core friendly. Checked against the fp32 ONNX
    model: max |dlogit| <= FP16_ATOL on the parity images and equal top-1 on >= FP16_MIN_AGREEMENT of the test set."""
    half = copy.deepcopy(model).half().eval()
    path = staging / "model.fp16.onnx"
    export_onnx(half, path, image_size, opset, temperature, torch.float16)
    s32, s16 = ort_session(staging / "model.onnx"), ort_session(path)
    a = np.concatenate([s32.run(["logits"], {"images": images[i:i + 16]})[0] for i in range(0, len(images), 16)])
    b = np.concatenate([s16.run(["logits"], {"images": images[i:i + 16]})[0] for i in range(0, len(images), 16)])
    delta, agree = float(np.abs(a - b).max()), float((a.argmax(1) == b.argmax(1)).mean())
    if delta > FP16_ATOL or agree < FP16_MIN_AGREEMENT:
        raise ExportError(f"fp16 parity failed: max |dlogit| {delta:.3g} (limit {FP16_ATOL}), top-1 agreement "
                          f"{agree:.4f} (limit {FP16_MIN_AGREEMENT}) on {len(images)} test images")
    return Variant(file=path.name, sha256=sha256_of(path), max_abs_diff_vs_fp32=delta, top1_agreement=agree,
                   limits={"max_abs_diff": FP16_ATOL, "top1_agreement": FP16_MIN_AGREEMENT}, n=len(images))


def _as_files(images: ImageSet, folder: Path) -> list[tuple[str, int]]:
    """The skew gate scores files; in-memory sets (CIFAR) are written as lossless PNGs."""
    if images.paths is not None:
        return [(str(p), y) for p, y in zip(images.paths, images.labels)]
    items = []
    for i, y in enumerate(images.labels):
        p = folder / f"{i:06d}.png"
        images.image(i).save(p)
        items.append((str(p), y))
    return items


def skew_gate(version_dir: Path, test: ImageSet, torch_accuracy: float, tolerance_points: float,
              precision: str = "fp32") -> dict:
    """Re-score the artifact through `python -m serving.score` (the service's decode/resize/crop + onnxruntime)."""
    with tempfile.TemporaryDirectory() as tmp:
        items = _as_files(test, Path(tmp))
        labels_file = Path(tmp) / "labels.jsonl"  # JSON lines: any file name, newlines and tabs included
        labels_file.write_text("".join(json.dumps({"path": p, "label": y}) + "\n" for p, y in items))
        proc = subprocess.run([sys.executable, "-m", "serving.score", "--model", str(version_dir),
                               "--labels", str(labels_file), "--precision", precision], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"skew gate could not run the serving scorer:\n{proc.stderr[-2000:]}")
    served = json.loads(proc.stdout)
    gap = abs(served["accuracy"] - torch_accuracy) * 100
    reference = "torch_accuracy" if precision == "fp32" else f"{precision}_onnxruntime_accuracy"
    result = {reference: torch_accuracy, "served_accuracy": served["accuracy"], "gap_points": gap,
              "tolerance_points": tolerance_points, "n": served["n"]}
    if gap > tolerance_points:
        raise ExportError(f"train/serve skew ({precision}): test accuracy through the serving path is "
                          f"{served['accuracy']:.4f}, training's evaluation gives {torch_accuracy:.4f} ({gap:.2f} "
                          f"points apart, limit {tolerance_points}). "
                          "Check resize_size / image_size / interpolation in model.json against the training config.")
    return result


def library_versions() -> dict:
    import onnxruntime
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def build_artifact(model: torch.nn.Module, final: FinalModel, test: ImageSet, artifacts_root: Path,
                   parity_images: np.ndarray, opset: int = 18, skew_tolerance: float = 0.3,
                   report_dir: Path | None = None,
                   fp16_images: np.ndarray | None = None, gate_limits: GateLimits = GateLimits(),
                   int8: Int8Plan | None = None) -> Path:
    """Export, check parity and skew, write model.json (+ report/), install the version, move LATEST if the publish
    gate passes (else PublishRefused); returns the version directory."""
    pre, name = final.preprocess, final.name
    root = Path(artifacts_root) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it 0700: the service (another user) must be able to read the version
    try:
        t0 = time.perf_counter()
        export_onnx(model, staging / "model.onnx", pre.image_size, opset, final.temperature)
        parity = check_parity(model, staging / "model.onnx", parity_images)
        digest = sha256_of(staging / "model.onnx")
        version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + digest[:8]
        card = ModelCard(name=name, version=version, created=datetime.now(timezone.utc).isoformat(),
                         classes=final.classes, image_size=pre.image_size, resize_size=pre.resize_size,
                         interpolation=pre.interpolation, temperature=final.temperature,
                         backbone=final.config["model"]["backbone"], metrics=final.metrics,
                         config=final.config, libraries=library_versions(), sha256=digest, parity=parity,
                         monitoring=final.monitoring, tuning=final.tuning)
        if fp16_images is not None:
            card.variants["fp16"] = export_fp16(model, staging, pre.image_size, opset, card.temperature,
                                                fp16_images)
        if int8 is not None:
            shipped, refused = export_int8(staging, card.temperature, pre, test, int8)
            card.variants.update(shipped)
            card.variants_refused.update(refused)
            for why in refused.values():
                event(f"warning: {why}")
        # Written twice: the skew gate scores the staging directory through the service's own loader, which
        # reads model.json; the final card then adds the gates' results.
        card.write(staging)
        card.skew_gate = SkewGate(**skew_gate(staging, test, card.test_accuracy, skew_tolerance))
        for key in INT8_VARIANTS:  # each int8 file through the service's path, against its own accuracy here
            if key in card.variants:
                setattr(card.skew_gate, key, SkewCheck(**skew_gate(staging, test, card.variants[key].test_accuracy,
                                                                   skew_tolerance, key)))
        card.publish_gate = gate(card, root, gate_limits)
        card.export_seconds = round(time.perf_counter() - t0, 1)
        card.write(staging)
        if report_dir is not None and Path(report_dir).is_dir():
            shutil.copytree(report_dir, staging / "report")
            # what shipped beside fp32 and why not the rest, beside the evaluation it belongs to
            (staging / "report" / "variants.json").write_text(json.dumps(
                {"variants": {k: v.model_dump(mode="json") for k, v in card.variants.items()},
                 "refused": card.variants_refused}, indent=2))
        target = install(staging, root, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not card.publish_gate.passed:
        raise PublishRefused(target, card.publish_gate.reasons)
    compared = card.publish_gate.compared_with
    promote(root, version, "publish gate passed" + (f" (vs {compared.version})" if compared else ""))
    return target
