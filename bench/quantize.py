"""INT8 against fp32 on this CPU, in one run: how to quantize (accuracy), and what it buys (speed).

python -m bench.quantize accuracy --model artifacts/hymenoptera [--counts 32 64 128]
python -m bench.quantize speed [--backbones resnet50 efficientnet_lite0 ...] [--batches 1 8 32]

accuracy: the published model's fp32 file quantized by the export's own code (training.quantize) with each
calibration method and number of calibration images, each scored on the run's test split (the images the model
card's accuracy was measured on): test accuracy, top-1 agreement with fp32, mean |dp|, whether the export's int8
gate would ship it, and its img/s at batch 8 against fp32 (all files raced in the same rounds). Also the formats and
types the export does not use (int8 activations, uint8 weights, no reduce_range, QOperator), so the table says why
it uses the ones it does.

speed: every backbone (random init: speed does not depend on the weights; calibrated on real photos) exported
through the product's own ONNX path, fp32 and int8 raced round after round at each batch size (median round), with
the achieved GOP/s set against this CPU's peaks, measured in the same run: onnxruntime's own fp32 MatMul and uint8 x
int8 MatMulInteger on large square matrices (the kernels the models' convolutions reach, with whatever the CPU has:
AVX2, AVX-512, VNNI, AMX), so the percentages need no datasheet and hold on any node.
Appends the tables to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.infer import gflop_per_image, machine, ort_runner, race
from contract.canary import cpu_flags
from contract.card import load_card
from contract.preprocess import PreprocessSpec
from contract.publish import resolve_path
from contract.scores import softmax
from training.config import DataConfig, ModelConfig, TrainConfig
from training.data import load_splits
from training.export import export_onnx
from training.job import prepared_splits
from training.model import build_model
from training.quantize import logits_of, model_inputs, quantize, runner, spread

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "hymenoptera_data"


def int8_isa() -> str:
    """The int8 dot-product instructions this CPU has, best first: what decides whether 8-bit weights saturate
    (AVX2 alone sums pairs of uint8 x int8 products in 16 bits) and how far int8 can outrun fp32."""
    flags = cpu_flags() or set()
    found = [name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"),
                                     ("avx_vnni", "AVX-VNNI")) if flag in flags]
    return " + ".join(found) if found else "AVX2, no VNNI"


def gemm_peaks(n: int = 2048, seconds: float = 2.0) -> tuple[float, float]:
    """(fp32 GFLOP/s, int8 GOP/s) of onnxruntime's MatMul and MatMulInteger (uint8 x int8) on n x n matrices, on
    every core: the throughput the CPU's kernels reach on large well-shaped work, which the models' rates are set
    against. A reference, not a ceiling: a model's large convolutions can run a little faster (turbo, shapes)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    rates = []
    for op, a_type, b_type, out_type, a, b in (
            ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
             rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)),
            ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
             rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-128, 128, (n, n), dtype=np.int8))):
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "gemm",
                                  [helper.make_tensor_value_info("a", a_type, [n, n])],
                                  [helper.make_tensor_value_info("y", out_type, [n, n])],
                                  [onnx.numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"a": a})
        calls, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            session.run(None, {"a": a})
            calls += 1
        rates.append(2 * n ** 3 * calls / elapsed / 1e9)
    return rates[0], rates[1]


@dataclass(frozen=True)
class Choice:
    method: str
    images: int
    form: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = True

    @property
    def shipped_format(self) -> bool:
        """One of the export's two files (training.quantize.WEIGHT_RANGES: 8-bit or 7-bit weights)."""
        return (self.form, self.activations, self.weights) == ("QDQ", "uint8", "int8")


def _quantize_variant(fp32: Path, out: Path, calibration: np.ndarray, c: Choice) -> None:
    """training.quantize.quantize for the product's format; the alternatives through the same onnxruntime call."""
    if c.shipped_format:
        return quantize(fp32, out, calibration, c.method, c.reduce_range)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.quantize import CalibrationReader
    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(str(prepared), str(out), CalibrationReader(calibration), quant_format=getattr(QuantFormat, c.form),
                    per_channel=True, reduce_range=c.reduce_range, weight_type=types[c.weights],
                    activation_type=types[c.activations],
                    calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax", "entropy": "Entropy",
                                                                 "percentile": "Percentile"}[c.method]))


def accuracy(model: Path, counts: list[int], rounds: int, seconds: float) -> str:
    version = resolve_path(model)
    card = load_card(version)
    cfg = TrainConfig.model_validate(card.config)
    splits, _ = prepared_splits(cfg)
    test = splits.scored_test()
    spec = card.spec
    labels = np.asarray(test.labels)
    (a,) = logits_of([runner(version / "model.onnx")], test, spec)
    acc32 = float((a.argmax(1) == labels).mean())
    choices = [Choice(m, n, reduce_range=r) for r in (False, True) for m in ("minmax", "entropy", "percentile")
               for n in counts]
    choices += [Choice("minmax", 64, activations="int8"),
                Choice("minmax", 64, weights="uint8", reduce_range=False), Choice("minmax", 64, form="QOperator"),
                Choice("minmax", 64, form="QOperator", weights="uint8", reduce_range=False)]
    rows, runners = [], {"fp32": ort_runner(version / "model.onnx")}
    tmp = Path(tempfile.mkdtemp())
    for k, c in enumerate(choices):
        calibration = model_inputs(splits.train, spec, spread(splits.train, c.images, cfg.seed))
        out = tmp / f"{k}.onnx"
        t0 = time.perf_counter()
        _quantize_variant(version / "model.onnx", out, calibration, c)
        seconds_q = time.perf_counter() - t0
        (b,) = logits_of([runner(out)], test, spec)
        acc8, agree = float((b.argmax(1) == labels).mean()), float((a.argmax(1) == b.argmax(1)).mean())
        dp = float(np.abs(softmax(a, card.temperature) - softmax(b, card.temperature)).mean())
        ships = (acc32 - acc8) * 100 <= cfg.export.int8_max_drop and agree >= cfg.export.int8_min_agreement
        runners[k] = ort_runner(out)
        rows.append([c.method, c.images, c.form, c.activations, c.weights, "yes" if c.reduce_range else "no",
                     f"{acc8:.4f}", f"{(acc8 - acc32) * 100:+.2f}", f"{agree:.4f}", f"{dp:.4f}",
                     "yes" if ships else "no", f"{seconds_q:.0f}"])
    batch = np.random.default_rng(0).integers(0, 256, (8, card.image_size, card.image_size, 3), dtype=np.uint8)
    rates = race(runners, batch, rounds, seconds)
    lines = ["| " + " | ".join(map(str, row)) + f" | {rates[k]:.1f} | {rates[k] / rates['fp32']:.2f} |"
             for k, row in enumerate(rows)]
    return "\n".join([
        f"\n### bench/quantize.py accuracy: {card.name} {card.version} ({card.backbone}, {card.image_size} px), "
        f"{len(labels)} test images, fp32 test accuracy {acc32:.4f}, fp32 {rates['fp32']:.1f} img/s at batch 8; "
        f"{machine()}, {int8_isa()}\n",
        "| calibration | images | format | activations | weights | reduce_range | int8 test accuracy | vs fp32 "
        "(points) | top-1 agreement | mean abs dp | export gate ships it | quantize s | img/s at batch 8 | / fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *lines, ""])


def speed(backbones: list[str], size: int, batches: list[int], rounds: int, seconds: float) -> str:
    peak, int8_peak = gemm_peaks()
    splits = load_splits(DataConfig(path=DATA, limit_per_class=16), 0)
    spec = PreprocessSpec(int(size * 1.14), size, "bilinear")
    calibration = model_inputs(splits.train, spec, spread(splits.train, 32, 0))
    rows, rng = [], np.random.default_rng(0)
    for name in backbones:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone=name, weights="none"), 1000).eval()
        folder = Path(tempfile.mkdtemp())
        export_onnx(model, folder / "fp32.onnx", size, 18)
        quantize(folder / "fp32.onnx", folder / "int8.onnx", calibration, "minmax", reduce_range=False)
        gop = gflop_per_image(model, size)
        runners = {"fp32": ort_runner(folder / "fp32.onnx"), "int8": ort_runner(folder / "int8.onnx")}
        for bs in batches:
            batch = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
            r = race(runners, batch, rounds, seconds)
            rows.append(f"| {name} | {bs} | {r['fp32']:.1f} | {r['int8']:.1f} | {r['int8'] / r['fp32']:.2f} | "
                        f"{r['fp32'] * gop:.0f} ({100 * r['fp32'] * gop / peak:.0f} %) | "
                        f"{r['int8'] * gop:.0f} ({100 * r['int8'] * gop / int8_peak:.0f} %) |")
    return "\n".join([
        f"\n### bench/quantize.py speed at {size} px: onnxruntime fp32 vs int8 (training.quantize: QDQ, uint8 "
        f"activations, int8 per-channel 8-bit weights), {machine()}, {int8_isa()}; peaks (onnxruntime's "
        f"GEMM at 2048, measured in this run): fp32 {peak:.0f} GFLOP/s, int8 {int8_peak:.0f} GOP/s\n",
        "| backbone | batch | fp32 img/s | int8 img/s | int8 / fp32 | fp32 GFLOP/s (of peak) | int8 GOP/s (of peak) |",
        "|---|---|---|---|---|---|---|", *rows, ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--model", type=Path, default=ROOT / "artifacts" / "hymenoptera")
    a.add_argument("--counts", type=int, nargs="+", default=[32, 64, 128])
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--seconds", type=float, default=2.0)
    s = sub.add_parser("speed")
    s.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0", "mobilenet_v3_large",
                                                      "resnet18"])
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--seconds", type=float, default=2.0)
    for p in (a, s):
        p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    if args.what == "accuracy":
        text = accuracy(args.model, args.counts, args.rounds, args.seconds)
    else:
        text = speed(args.backbones, args.size, args.batches, args.rounds, args.seconds)
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
