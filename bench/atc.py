"""Does the label-free accuracy estimate hold? ATC-MC, ATC-NE and AC against the true accuracy on shifted data.

python -m bench.atc --model artifacts/cifar10 [--replay blur-3]

The artifact's test split (from the training config in model.json), and copies of it under six corruptions at five
severities each (Gaussian blur, Gaussian noise, JPEG quality, brightness, contrast, pixelation; CIFAR-10-C's
parameters, fixed seeds), applied to the original image before the service's own preprocessing; plus two
label-shifted copies (half the classes; one class five times over). For each set: the true accuracy, the three
estimates (thresholds from model.json, fitted on validation), and the drift statistic (PSI of predicted-class shares
against model.json's reference). With --replay, one set goes through the running service and the estimate read from
its /metrics is set beside the offline one. Prints the table and appends it to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageFilter

from contract import monitoring
from contract.card import load_card
from contract.preprocess import resize_crop
from contract.publish import resolve_path
from contract.scores import softmax
from serving.launch import Server
from training.config import DataConfig
from training.data import ImageSet, load_splits

ROOT = Path(__file__).resolve().parents[1]
SEVERITIES = range(1, 6)


def _array(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32) / 255.0


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def corrupt(im: Image.Image, kind: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """CIFAR-10-C's corruption parameters (Hendrycks & Dietterich, 2019), scaled to the image's size."""
    s = severity - 1
    scale = min(im.size) / 32  # the parameters are for 32 px images
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur([0.4, 0.6, 0.7, 0.8, 1.0][s] * scale))
    if kind == "noise":
        x = _array(im)
        return _image(x + rng.normal(0, [0.04, 0.06, 0.08, 0.09, 0.10][s], x.shape))
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=[80, 65, 58, 50, 40][s])
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "brightness":
        return _image(_array(im) + [0.05, 0.1, 0.15, 0.2, 0.3][s])
    if kind == "contrast":
        x = _array(im)
        mean = x.mean(axis=(0, 1), keepdims=True)
        return _image((x - mean) * [0.75, 0.5, 0.4, 0.3, 0.15][s] + mean)
    if kind == "pixelate":
        w, h = im.size
        c = [0.95, 0.9, 0.85, 0.75, 0.65][s]
        return im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX).resize((w, h),
                                                                                               Image.Resampling.BOX)
    raise ValueError(kind)


KINDS = ("blur", "noise", "jpeg", "brightness", "contrast", "pixelate")


def shifted_sets(test: ImageSet, seed: int = 0):
    """(name, kind, images as PIL, labels): clean, 6 x 5 corruptions, 2 label shifts."""
    originals = [test.image(i) for i in range(len(test))]
    labels = np.asarray(test.labels)
    yield "clean", "clean", originals, labels
    for k_i, kind in enumerate(KINDS):
        for sev in SEVERITIES:
            rng = np.random.default_rng([seed, k_i, sev])
            yield f"{kind}-{sev}", "corruption", [corrupt(im, kind, sev, rng) for im in originals], labels
    half = np.flatnonzero(labels < max(1, len(test.classes) // 2))
    yield "labels: first half of the classes", "label shift", [originals[i] for i in half], labels[half]
    heavy = np.concatenate([np.arange(len(labels))] + [np.flatnonzero(labels == 0)] * 4)
    yield "labels: class 0 five times over", "label shift", [originals[i] for i in heavy], labels[heavy]


def probabilities(session, card, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    arrays = np.stack([resize_crop(im, card.spec) for im in images])
    logits = np.concatenate([session.run(["logits"], {"images": arrays[i:i + batch]})[0]
                             for i in range(0, len(arrays), batch)])
    return softmax(logits, card.temperature)


def replay(version: Path, card, images: list[Image.Image]) -> dict[str, float]:
    """The set through the running service (lossless PNGs); the estimates from its /metrics."""
    srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_ACCESS_LOG": "false"})
    try:
        assert srv.wait_ready(), "service did not become ready"
        for im in images:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            r = httpx.post(srv.url + "/predict", files={"image": ("x.png", buf.getvalue())}, timeout=60)
            r.raise_for_status()
        text = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()

    def value(pattern: str) -> float:
        return float(re.findall(pattern + r" ([0-9.eE+-]+)", text)[0])
    n = value("imgcls_confidence_count")
    return {"n": n, "atc_mc": value(r'imgcls_atc_confident_total\{score="mc"\}') / n,
            "atc_ne": value(r'imgcls_atc_confident_total\{score="ne"\}') / n,
            "ac": value("imgcls_confidence_sum") / n}


def clean_by_seed(versions: list[Path]) -> list[str]:
    """The clean test split across seeds: each estimate's error in points and in binomial standard errors. The
    thresholds come from a validation draw, so one seed's error mixes the method's bias with that draw's luck."""
    lines = ["\nClean test split by seed (self-check in model.json; error = estimate - true, in points and in "
             "standard errors):\n",
             "| seed | validation n | validation acc | test n | test acc ± SE | ATC-MC | ATC-NE | AC |",
             "|---|---|---|---|---|---|---|---|"]
    errors = {"atc_mc": [], "atc_ne": [], "ac": []}
    for version in versions:
        card = load_card(version)
        fit, check = card.monitoring.fitted_on, card.monitoring.self_check
        acc = check.accuracy
        se = math.sqrt(acc * (1 - acc) / check.n)
        cells = []
        for k in errors:
            estimate = getattr(check, k)
            errors[k].append(abs(estimate - acc) / se)
            cells.append(f"{100 * (estimate - acc):+.1f} ({(estimate - acc) / se:+.2f} SE)")
        lines.append(f"| {card.config['seed']} | {fit['n']} | {fit['accuracy']:.3f} | {check['n']} | {acc:.3f} ± "
                     f"{se:.3f} | " + " | ".join(cells) + " |")
    lines.append("\nWithin one standard error: " + ", ".join(
        f"{k.upper().replace('_', '-')} {sum(e <= 1 for e in v)} of {len(v)}" for k, v in errors.items()) + ".")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="artifacts/<name> or a version directory")
    ap.add_argument("--replay", default="blur-3", help="a set to send through the running service ('' for none)")
    ap.add_argument("--also", type=Path, nargs="*", default=[],
                    help="runs of the same config with other seeds (other validation draws): their clean-split "
                         "self-checks from model.json are tabulated beside this model's")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    version = resolve_path(args.model)
    card = load_card(version)
    if not card.monitoring:
        raise SystemExit(f"{version}/model.json has no monitoring block: export it with this version of training")
    thresholds, reference = card.monitoring.thresholds, card.monitoring.reference_shares
    data = DataConfig.model_validate(card.config["data"])
    test = load_splits(data, card.config["seed"]).test
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    rows, errors, replayed = [], {"atc_mc": [], "atc_ne": [], "ac": []}, None
    for name, kind, images, labels in shifted_sets(test):
        probs = probabilities(session, card, images)
        acc = float(np.mean(probs.argmax(1) == labels))
        est = monitoring.estimates(probs, thresholds)
        drift = monitoring.psi(monitoring.predicted_shares(probs, card.classes), reference)
        rows.append((name, kind, len(labels), acc, est, drift))
        if kind == "corruption":
            for k in errors:
                errors[k].append(abs(est[k] - acc))
        if name == args.replay:
            replayed = (name, est, replay(version, card, images))
    clean = rows[0]
    se = math.sqrt(clean[3] * (1 - clean[3]) / clean[2])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n### bench/atc.py: {card.name} {card.version} ({card.backbone}, {card.image_size} px, "
             f"{len(card.classes)} classes), {stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores\n",
             "| set | kind | n | true acc | ATC-MC | ATC-NE | AC | PSI drift |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {c} | {a:.3f} | {e['atc_mc']:.3f} | {e['atc_ne']:.3f} | {e['ac']:.3f} | {d:.3f} |"
              for n, k, c, a, e, d in rows]
    mae = {k: 100 * float(np.mean(v)) for k, v in errors.items()}
    lines.append(f"\nMean absolute error over the {len(errors['ac'])} corruption sets (points): ATC-MC "
                 f"{mae['atc_mc']:.1f}, ATC-NE {mae['atc_ne']:.1f}, AC {mae['ac']:.1f}. Clean test: true "
                 f"{clean[3]:.3f} ± {se:.3f} (binomial standard error), ATC-MC {clean[4]['atc_mc']:.3f}, ATC-NE "
                 f"{clean[4]['atc_ne']:.3f}. PSI: clean {clean[5]:.3f}, label-shifted "
                 + ", ".join(f"{d:.3f}" for _, k, _, _, _, d in rows if k == "label shift")
                 + "; corruptions max " + f"{max(d for _, k, _, _, _, d in rows if k == 'corruption'):.3f}.")
    if replayed:
        name, offline, served = replayed
        lines.append(f"Replayed through the running service ({name}, {served['n']:.0f} requests): ATC-MC from "
                     f"/metrics {served['atc_mc']:.4f} vs offline {offline['atc_mc']:.4f}, ATC-NE "
                     f"{served['atc_ne']:.4f} vs {offline['atc_ne']:.4f}, AC {served['ac']:.4f} vs "
                     f"{offline['ac']:.4f}.")
    if args.also:
        lines += clean_by_seed([version, *map(resolve_path, args.also)])
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
