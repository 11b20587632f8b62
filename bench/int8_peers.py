"""The product's int8 files against OpenVINO's own int8 path (NNCF), the same model.onnx, in one run.

python -m bench.int8_peers --model artifacts/hymenoptera [--batches 1 8 32] [--rounds 2] [--results bench/RESULTS.md]

The alternative a team would reach for on Intel CPUs is OpenVINO: its CPU plugin runs ONNX directly and NNCF
quantizes it after training. It runs in an environment of its own that this bench makes (.cache/peers/openvino;
never a dependency of the product) through bench/peer_apps/openvino_int8.py, on what this process prepared with the
product's own code: the export's calibration images (the same training images, count and order) and the scored test
split as model input. Here: onnxruntime on model.onnx and on each int8 file the artifact ships (training.quantize),
scored on the same test images and timed at the same batch sizes, before and after OpenVINO's run (the median of
those rounds), so a noisy neighbour slows both. Accuracy is on the test split; speed on random pixels (it does not
depend on them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.infer import machine, ort_runner, race
from bench.quantize import int8_isa
from contract.card import load_card
from contract.precision import INT8_VARIANTS
from contract.publish import resolve_path
from training.config import TrainConfig
from training.job import prepared_splits
from training.quantize import logits_of, model_inputs, runner, spread

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["openvino==2026.4.1", "nncf==3.4.0", "onnxruntime-openvino==1.24.1"]


def ensure_venv(root: Path) -> Path:
    """OpenVINO's environment, made once: its wheels (and onnxruntime's build with the OpenVINO execution provider),
    with this environment's numpy."""
    python = root / "openvino" / "bin" / "python"
    wanted = " ".join(PACKAGES + [f"numpy=={np.__version__}"])
    marker = root / "openvino" / ".imgcls-ready"
    if marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root / "openvino")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted.split()], check=True)
    marker.write_text(wanted)
    return python


def ort_rates(files: dict[str, Path], size: int, batches: list[int], seconds: float) -> dict[str, dict[int, float]]:
    """img/s of each file at each batch size, one call at a time (as the service and the peer's run time it)."""
    rng = np.random.default_rng(0)
    runners = {k: ort_runner(p) for k, p in files.items()}
    by_batch = {b: race(runners, rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8), 1, seconds)
                for b in batches}
    return {k: {b: by_batch[b][k] for b in batches} for k in files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "artifacts" / "hymenoptera")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--venvs", type=Path, default=ROOT / ".cache" / "peers")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    python = ensure_venv(args.venvs)
    version = resolve_path(args.model)
    card = load_card(version)
    cfg = TrainConfig.model_validate(card.config)
    splits = prepared_splits(cfg)[0]
    test = splits.scored_test()
    spec = card.spec
    calibration = model_inputs(splits.train, spec, spread(splits.train, cfg.export.int8_calibration_images, cfg.seed))
    pixels = model_inputs(test, spec, list(range(len(test))))
    labels = np.asarray(test.labels)
    files = {"fp32": version / "model.onnx"} | {k: version / card.variants[k].file for k in INT8_VARIANTS
                                                if k in card.variants}
    scores = dict(zip(files, logits_of([runner(p) for p in files.values()], test, spec)))
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.npz", Path(tmp) / "openvino.json"
        np.savez(data, calibration=calibration, test=pixels, labels=labels)
        rounds = [ort_rates(files, card.image_size, args.batches, args.seconds)]
        app = ROOT / "bench" / "peer_apps" / "openvino_int8.py"
        subprocess.run([str(python), str(app), str(version / "model.onnx"), str(data), str(out), "--batches",
                        *map(str, args.batches), "--rounds", str(args.rounds), "--seconds", str(args.seconds),
                        "--ort", *(f"{k}={p}" for k, p in files.items())], check=True)
        rounds.append(ort_rates(files, card.image_size, args.batches, args.seconds))
        peer = json.loads(out.read_text())
    text = table(card, files, scores, labels, rounds, peer, args.batches)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(text)


def table(card, files, scores, labels, rounds, peer, batches) -> str:
    ort = {k: {b: statistics.median(r[k][b] for r in rounds) for b in batches} for k in files}
    acc = {k: float((z.argmax(1) == labels).mean()) for k, z in scores.items()}
    rows = []
    for k in files:
        how = "-" if k == "fp32" else f"training.quantize ({card.variants[k].calibration.weights})"
        agree = "-" if k == "fp32" else f"{float((scores[k].argmax(1) == scores['fp32'].argmax(1)).mean()):.4f}"
        rows.append([f"onnxruntime, {k}", how, acc[k], agree] + [ort[k][b] for b in batches])
    ov, precision = peer["img_s"], peer["precision"]
    nncf = f"NNCF {peer['nncf']} nncf.quantize, defaults ({peer['quantize_s']:.0f} s)"
    for suffix, agreement in (("", peer["agreement"]), (":f32", peer["agreement_f32"])):
        how = "its own choice" if not suffix else "f32 forced"
        rows.append([f"OpenVINO, fp32 file, compute {precision['fp32' + suffix]} ({how})", "-",
                     peer["accuracy"]["fp32" + suffix], "-"] + [ov["fp32" + suffix][str(b)] for b in batches])
        rows.append([f"OpenVINO, int8, the rest {precision['int8' + suffix]} ({how})", nncf,
                     peer["accuracy"]["int8" + suffix], f"{agreement:.4f}"] + [ov["int8" + suffix][str(b)]
                                                                               for b in batches])
    failed = []
    for k in files:
        name = f"onnxruntime-openvino {peer['ort_version']} (OpenVINO execution provider), {k}"
        if f"ep:{k}" in peer["ort_openvino_errors"]:
            failed.append(f"| {name} | failed: {peer['ort_openvino_errors'][f'ep:{k}']} |" + " |" * (3 + len(batches)))
            continue
        rows.append([name, "-" if k == "fp32" else "the product's file (above)", peer["ort_openvino"][f"ep:{k}"], "-"]
                    + [ov[f"ep:{k}"][str(b)] for b in batches])
    base = ort["fp32"]
    lines = ["| " + " | ".join([r[0], r[1], f"{r[2]:.4f}", f"{(r[2] - acc['fp32']) * 100:+.2f}", r[3]]
                               + [f"{v:.1f} ({v / base[b]:.2f})" for v, b in zip(r[4:], batches)]) + " |"
             for r in rows]
    return "\n".join([
        f"\n### bench/int8_peers.py: {card.name} {card.version} ({card.backbone}, {card.image_size} px), "
        f"{len(labels)} test images; {machine()}, {int8_isa()}, OpenVINO {peer['openvino']}\n",
        "| runtime, file | how quantized | test accuracy | vs onnxruntime fp32 (points) | top-1 agreement with its "
        "fp32 | " + " | ".join(f"img/s at batch {b} (/ onnxruntime fp32)" for b in batches) + " |",
        "|---|---|---|---|---|" + "---|" * len(batches), *lines, *failed, ""])


if __name__ == "__main__":
    main()
