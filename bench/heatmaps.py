"""Heatmaps measured: are they faithful (the deletion check), and what do they cost over /predict, in one run.

python -m bench.heatmaps --model artifacts/hymenoptera artifacts/cifar10 [--concurrency 1 8] [--rounds 3]

1. The deletion check (training.deletion) on each model's own test split (as its run evaluated it: the config in
   model.json), through the exported graph: hiding the 20 % of pixels the top class's heatmap ranks highest, against
   hiding 20 % by random maps of the same resolution (5 draws per photo); for both of the service's heatmaps, the
   graph's Grad-CAM and occlusion at the same grid (/explain's method).
2. The cost, on the first model: the real service started once, loaded by bench/serve.py's client with the test
   split's photos as shot at each concurrency, /predict, /explain (grid) and /explain (format=png) in turn, over
   rounds (the machine is shared and drifts): images per second and the server's CPU per image; the ratios to
   /predict's in the same round, median over rounds. The returned class's heatmap alone (top_k=1: what the issue
   prices), as a grid and as a PNG, and the PNGs of every class the answer lists (top_k=3); and the grid by
   occlusion (one model run per cell).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from bench.serve import ROOT, load
from bench.serve_cpu import cpu_ms
from contract.card import load_card
from contract.publish import resolve_path
from serving.launch import Server
from training.config import TrainConfig
from training.deletion import deletion_check
from training.job import prepared_splits
from training.quantize import model_inputs


def endpoint(route: str, **fields: str):
    def send(client: httpx.Client, url: str, blob: bytes) -> httpx.Response:
        return client.post(url + route, files={"image": ("x.jpg", blob, "image/jpeg")}, data=fields)
    return send


# The measure is one heatmap an image, the returned class's (top_k=1); top_k=3 maps every class the answer
# lists (both of the demo's two), so its PNG variant renders twice as many overlays.
ENDPOINTS = {"/predict": endpoint("/predict"),
             "/explain (grid, top_k=1)": endpoint("/explain", top_k="1"),
             "/explain (png, top_k=1)": endpoint("/explain", top_k="1", format="png"),
             "/explain (png, top_k=3)": endpoint("/explain", format="png"),
             "/explain (grid, top_k=1, method=occlusion)": endpoint("/explain", top_k="1", method="occlusion")}


def test_split(version: Path):
    """The scored test split of the run that made this version (its config is in model.json)."""
    card = load_card(version)
    splits, _ = prepared_splits(TrainConfig.model_validate(card.config))
    return card, splits.scored_test()


def faithfulness(version: Path, limit: int) -> list[dict]:
    """The deletion check of each heatmap method on the model's test photos."""
    card, test = test_split(version)
    picks = list(range(min(limit, len(test))))
    pixels = model_inputs(test, card.spec, picks)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    return [{"model": f"{card.name} {card.version} ({card.backbone}, {card.image_size} px)", "method": method,
             **deletion_check(session, pixels, method=method).summary()} for method in ("cam", "occlusion")]


def photo_blobs(version: Path, n: int = 64) -> list[bytes]:
    _, test = test_split(version)
    if test.paths is None:
        raise SystemExit("the cost is measured on photos as files: give a model trained on a folder of photos first")
    return [Path(p).read_bytes() for p in test.paths[:n]]


def cost(version: Path, concurrencies: list[int], rounds: int, requests: int) -> dict:
    blobs = photo_blobs(version)
    srv = Server({"SERVING_MODEL_DIR": str(version.resolve()), "SERVING_PRECISION": "fp32"},
                 Path(os.environ.get("TMPDIR", "/tmp")) / "bench-heatmaps.log")
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        assert srv.wait_ready(), "service did not become ready"
        procs = [psutil.Process(srv.proc.pid), *psutil.Process(srv.proc.pid).children(recursive=True)]
        for _ in range(rounds):
            for c in concurrencies:
                for name, send in ENDPOINTS.items():
                    n = max(requests, 4 * c)
                    load(srv.url, blobs, c, 2 * c, send)  # warm-up
                    before = sum(cpu_ms(procs))
                    row = load(srv.url, blobs, c, n, send)
                    row["cpu_ms"] = (sum(cpu_ms(procs)) - before) / n
                    runs.setdefault((name, c), []).append(row)
                    print(name, c, f"{row['img_s']:.1f} img/s, {row['cpu_ms']:.1f} core-ms/img", flush=True)
    finally:
        srv.stop()
    return runs


def cost_table(runs: dict, concurrencies: list[int]) -> str:
    lines = ["| endpoint | concurrency | img/s | p50 ms | p99 ms | server core-ms / img | img/s vs /predict | "
             "CPU / img vs /predict |", "|---|---|---|---|---|---|---|---|"]
    for c in concurrencies:
        base = runs[("/predict", c)]
        for name in ENDPOINTS:
            rows = runs[(name, c)]
            speed = statistics.median(r["img_s"] / b["img_s"] for r, b in zip(rows, base))
            cpu = statistics.median(r["cpu_ms"] / b["cpu_ms"] for r, b in zip(rows, base))
            med = {k: statistics.median(r[k] for r in rows) for k in ("img_s", "p50", "p99", "cpu_ms")}
            lines.append(f"| {name} | {c} | {med['img_s']:.1f} | {med['p50']:.0f} | {med['p99']:.0f} | "
                         f"{med['cpu_ms']:.1f} | {speed:.2f} | {cpu:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, nargs="+", default=[ROOT / "artifacts" / "hymenoptera"],
                    help="version directories, or artifacts/<name> (follows LATEST); the cost runs on the first")
    ap.add_argument("--photos", type=int, default=1000, help="test photos per model in the deletion check, at most")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--no-cost", action="store_true", help="the deletion check alone")
    args = ap.parse_args()
    versions = [resolve_path(m) for m in args.model]
    checks = [c for v in versions for c in faithfulness(v, args.photos)]
    for c in checks:
        print(c, flush=True)
    lines = ["| model | heatmap | photos | faithful (heatmap beats chance) | mean drop, heatmap | mean drop, random |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['method']} | {c['n']} | {c['faithful']:.3f} | {c['mean_drop_heatmap']:.3f} | "
              f"{c['mean_drop_random']:.3f} |" for c in checks]
    runs = None if args.no_cost else cost(versions[0], args.concurrency, args.rounds, args.requests)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/heatmaps.py: {stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU, "
            f"load generator on the same cores\n\nDeletion check (20 % of the pixels hidden, the top class's "
            f"probability):\n\n" + "\n".join(lines) + "\n" +
            ("" if runs is None else f"\nCost on {load_card(versions[0]).name}, photos as shot, fp32, {args.rounds} "
             "rounds (medians):\n\n" + cost_table(runs, args.concurrency) + "\n"))
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
