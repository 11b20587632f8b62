"""Raw inference speed on this machine: onnxruntime vs PyTorch eager, and onnxruntime session settings, in one run.

python -m bench.infer [--backbone resnet50] [--size 224] [--batches 1 8 32] [--peak-gflops 190]
python -m bench.infer --backbones resnet18 resnet50 resnet101 vgg16 mobilenet_v2 mobilenet_v3_large efficientnet_lite0
python -m bench.infer --device cuda --batches 1 8 32 128 256   # on a GPU: the service's session, fp32 and fp16

The model is the product's own (training.model.Classifier, random init: speed does not depend on the weights),
exported through the product's own ONNX path (uint8 NHWC contract, normalisation in the graph). Each variant runs in
turn, round after round, and the median round counts, so a noisy neighbour hits all variants alike. img/s are turned
into GFLOP/s with the network's cost per image (ResNet50 at 224 px: 8.2 GFLOP = 4.1 GMAC) and set against the
machine's FMA peak. With --backbones: one table of every backbone (parameters, GFLOP per image counted by
torch.utils.flop_counter, onnxruntime img/s at one batch size), all raced in the same rounds.
Appends the tables to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from serving.runtime import OnnxClassifier
from training.config import ModelConfig
from training.export import ContractWrapper, export_onnx
from training.model import build_model

ROOT = Path(__file__).resolve().parents[1]



def gflop_per_image(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image (a multiply-add counts 2), counted by PyTorch's own FLOP counter."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def ort_runner(path: Path, level="ORT_ENABLE_ALL", threads=0, arena=True):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = arena
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["logits"], {"images": batch})[0]


def eager_runner(model, channels_last: bool):
    wrapper = ContractWrapper(model).eval()
    if channels_last:
        wrapper = wrapper.to(memory_format=torch.channels_last)

    def run(batch: np.ndarray):
        with torch.inference_mode():
            return wrapper(torch.from_numpy(batch))[0].numpy()
    return run


def race(runners: dict, batch: np.ndarray, rounds: int, min_seconds: float) -> dict[str, float]:
    """img/s per runner: rounds of (every runner for >= min_seconds), median round."""
    for run in runners.values():
        run(batch)  # warm-up: allocations, kernel choice
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < min_seconds or n == 0:
                run(batch)
                n += 1
            rates[name].append(n * len(batch) / elapsed)
    return {name: statistics.median(r) for name, r in rates.items()}


def machine(peak: str = "", device: str = "CPU") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, {device}, "
            f"onnxruntime {ort.__version__}, torch {torch.__version__}{peak}")


def compare_backbones(names: list[str], size: int, bs: int, rounds: int, seconds: float) -> str:
    """Every backbone through the product's own ONNX export, raced round by round (noise hits all alike)."""
    runners, facts = {}, {}
    for name in names:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone=name, weights="none"), 2).eval()
        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        export_onnx(model, path, size, 18)
        runners[name] = ort_runner(path)
        params = sum(p.numel() for p in model.parameters())
        facts[name] = (params / 1e6, gflop_per_image(model, 224), path.stat().st_size / 2**20)
    batch = np.random.default_rng(0).integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
    rates = race(runners, batch, rounds, seconds)
    fastest = max(rates.values())
    rows = [f"| {n} | {facts[n][0]:.1f} | {facts[n][1]:.2f} | {facts[n][2]:.0f} | {rates[n]:.1f} | "
            f"{rates[n] / fastest:.2f} |" for n in names]
    return "\n".join([f"\n### bench/infer.py --backbones at {size} px, batch {bs}, {machine()}\n",
                      "| backbone | parameters (M, with a 2-class head) | GFLOP / image at 224 px | ONNX MB | "
                      "onnxruntime img/s | / fastest |", "|---|---|---|---|---|---|", *rows, ""])


def on_device(backbone: str, size: int, batches: list[int], device: str, rounds: int, seconds: float) -> str:
    """The service's own onnxruntime session (serving.runtime.OnnxClassifier: CUDA provider, else CPU with the
    reason logged) on the fp32 and the fp16 export, against PyTorch eager under fp16 autocast, channels_last."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, weights="none"), 1000).eval()
    folder = Path(tempfile.mkdtemp())
    export_onnx(model, folder / "fp32.onnx", size, 18)
    export_onnx(model.half(), folder / "fp16.onnx", size, 18, 1.0, torch.float16)
    model.float()
    sessions = {k: OnnxClassifier(folder / f"{k}.onnx", 1000, size, device) for k in ("fp32", "fp16")}
    gpu = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wrapper = ContractWrapper(model).eval().to(gpu, memory_format=torch.channels_last)

    def eager(batch: np.ndarray):
        with torch.inference_mode(), torch.autocast(gpu.type, torch.float16 if gpu.type == "cuda" else torch.bfloat16):
            out = wrapper(torch.from_numpy(batch).to(gpu))[0].float().cpu().numpy()  # copies back: a real answer
        return out
    rng = np.random.default_rng(0)
    rows = []
    for bs in batches:
        batch = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
        r = race({"fp32": sessions["fp32"].run, "fp16": sessions["fp16"].run, "eager": eager}, batch, rounds, seconds)
        rows.append(f"| {bs} | {r['fp32']:.0f} | {r['fp16']:.0f} | {r['eager']:.0f} | {r['fp16'] / r['fp32']:.2f} |")
    name = torch.cuda.get_device_name() if gpu.type == "cuda" else "no GPU"
    return "\n".join([f"\n### bench/infer.py --device {device}: {backbone} at {size} px, onnxruntime provider "
                      f"{sessions['fp32'].provider}, {machine(device=name)}\n",
                      "| batch | ORT fp32 img/s | ORT fp16 img/s | eager fp16 autocast channels_last img/s | "
                      "fp16 / fp32 |", "|---|---|---|---|---|", *rows, ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--backbones", nargs="+", help="compare these backbones in one table (batch: the largest of "
                                                   "--batches)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--peak-gflops", type=float, default=190.0, help="the machine's FMA peak (2 cores here)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--device", choices=["cpu", "auto", "cuda"], default="cpu",
                    help="auto / cuda: the service's session on the GPU, fp32 and fp16 (instead of the CPU tables)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    if args.device != "cpu":
        text = on_device(args.backbone, args.size, args.batches, args.device, args.rounds, args.seconds)
        print(text)
        with open(args.results, "a") as f:
            f.write(text)
        return
    if args.backbones:
        text = compare_backbones(args.backbones, args.size, max(args.batches), args.rounds, args.seconds)
        print(text)
        with open(args.results, "a") as f:
            f.write(text)
        return
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=args.backbone, weights="none"), 1000).eval()
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(model, path, args.size, 18)
    gflop = gflop_per_image(model, args.size)
    rng = np.random.default_rng(0)
    main_rows, variant_rows = [], []
    for bs in args.batches:
        batch = rng.integers(0, 256, (bs, args.size, args.size, 3), dtype=np.uint8)
        r = race({"ort": ort_runner(path), "eager": eager_runner(model, False),
                  "eager_cl": eager_runner(model, True)}, batch, args.rounds, args.seconds)
        best_eager = max(r["eager"], r["eager_cl"])
        peak = f"{100 * r['ort'] * gflop / args.peak_gflops:.0f} %" if gflop else "-"
        main_rows.append(f"| {bs} | {r['ort']:.1f} | {r['eager']:.1f} | {r['eager_cl']:.1f} | "
                         f"{r['ort'] / best_eager:.2f} | {r['ort'] * gflop:.0f} | {peak} |" if gflop else
                         f"| {bs} | {r['ort']:.1f} | {r['eager']:.1f} | {r['eager_cl']:.1f} | "
                         f"{r['ort'] / best_eager:.2f} | - | - |")
    bs = max(args.batches)
    batch = rng.integers(0, 256, (bs, args.size, args.size, 3), dtype=np.uint8)
    variants = {"ENABLE_ALL, threads=auto, arena (the service's)": ort_runner(path),
                "ENABLE_EXTENDED": ort_runner(path, "ORT_ENABLE_EXTENDED"),
                "ENABLE_BASIC": ort_runner(path, "ORT_ENABLE_BASIC"),
                "DISABLE_ALL": ort_runner(path, "ORT_DISABLE_ALL"),
                "ENABLE_ALL, 1 thread": ort_runner(path, threads=1),
                "ENABLE_ALL, no memory arena": ort_runner(path, arena=False)}
    r = race(variants, batch, args.rounds, args.seconds)
    base = r["ENABLE_ALL, threads=auto, arena (the service's)"]
    for name, rate in r.items():
        variant_rows.append(f"| {name} | {rate:.1f} | {rate / base:.2f} |")
    where = machine()
    text = "\n".join([
        f"\n### bench/infer.py: {args.backbone} at {args.size} px ({gflop:.2f} GFLOP/img), {where}\n",
        f"| batch | onnxruntime img/s | eager img/s | eager channels_last img/s | ORT / best eager | ORT GFLOP/s | "
        f"ORT % of {args.peak_gflops:.0f} GFLOP/s peak |", "|---|---|---|---|---|---|---|", *main_rows,
        f"\nonnxruntime session settings at batch {bs}:\n", "| session | img/s | vs the service's |", "|---|---|---|",
        *variant_rows, ""])
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
