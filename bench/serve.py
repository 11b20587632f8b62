"""Serving throughput and latency, batching on vs off, against raw onnxruntime, in one run.

python -m bench.serve --model artifacts/hymenoptera [--concurrency 1 8 32 64] [--requests 192]
python -m bench.serve --photo-sizes "as shot (~0.2 MP)" "12 MP" "24 MP"   # batching on, by photo size

Starts the real `bentoml serve` on 127.0.0.1 (twice: adaptive batching on, then off), sends real JPEGs from the test
split with N concurrent clients, reads the batch sizes from /metrics, and in the same run times raw onnxruntime at the
same batch sizes and the per-image decode+resize cost. The load generator shares the machine's cores with the server.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from bench.decode import SIZES as PHOTO_SIZES
from bench.decode import reencoded
from contract.card import load_card
from contract.preprocess import preprocess
from contract.publish import resolve_path
from serving.heap import freeze_startup_objects
from serving.launch import Server
from serving.runtime import OnnxClassifier

ROOT = Path(__file__).resolve().parents[1]

def scrape_batches(url: str) -> tuple[float, float, float]:
    """Images run, onnxruntime runs, and HTTP calls to a separate Model service (the two-service layout of older
    checkouts; none now), so far."""
    s = c = calls = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("imgcls_batch_size_sum"):
            s += float(line.rsplit(" ", 1)[1])
        elif line.startswith("imgcls_batch_size_count"):
            c += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_request_total{") and 'endpoint="/infer"' in line:
            calls += float(line.rsplit(" ", 1)[1])
    return s, c, calls


Send = Callable[[httpx.Client, str, bytes], httpx.Response]


def multipart(client: httpx.Client, url: str, blob: bytes) -> httpx.Response:
    """The service's /predict: one photo as a multipart upload."""
    return client.post(url + "/predict", files={"image": ("x.jpg", blob, "image/jpeg")})


def load(url: str, blobs: list[bytes], concurrency: int, requests: int, send: Send = multipart,
         batches: bool = True) -> dict:
    """`requests` requests from `concurrency` clients, each its own connection; batches: read the batch sizes from
    the service's /metrics (False for a server without them)."""
    clients = [httpx.Client(timeout=120) for _ in range(concurrency)]

    def one(i: int) -> float:
        t = time.perf_counter()
        send(clients[i % concurrency], url, blobs[i % len(blobs)]).raise_for_status()
        return time.perf_counter() - t

    for i in range(min(concurrency, 8)):  # warm the connections
        one(i)
    # the load generator's own full garbage collections walked its imports (httpx, numpy, torch where loaded): 21-26 ms
    # pauses that every server's latencies would carry; frozen as the service's workers freeze theirs
    freeze_startup_objects()
    s0, c0, calls0 = scrape_batches(url) if batches else (0.0, 0.0, 0.0)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = sorted(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    s1, c1, calls1 = scrape_batches(url) if batches else (0.0, 0.0, 0.0)
    for c in clients:
        c.close()
    q = statistics.quantiles(lat, n=100)
    return {"img_s": requests / wall, "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000,
            "mean_batch": (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
            "per_call": (s1 - s0) / (calls1 - calls0) if calls1 > calls0 else float("nan")}


def raw_ort(version: Path, arrays: np.ndarray, batch: int, seconds: float = 4.0) -> float:
    """onnxruntime alone on model.onnx, on the device the service is given (SERVING_DEVICE; default cpu)."""
    card = load_card(version)
    clf = OnnxClassifier(version / "model.onnx", len(card.classes), card.image_size,
                         os.environ.get("SERVING_DEVICE", "cpu"))
    images, wall, _ = run_for(clf, np.resize(arrays, (batch, *arrays.shape[1:])), seconds)
    return images / wall


def run_for(clf: OnnxClassifier, x: np.ndarray, seconds: float) -> tuple[int, float, float]:
    """clf.run(x) again and again for about `seconds` after one warm-up run: (images, wall s, this process's CPU s)."""
    clf.run(x)
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        clf.run(x)
        n += len(x)
    return n, time.perf_counter() - wall, time.process_time() - cpu


def service_bench_parser() -> argparse.ArgumentParser:
    """The arguments every service benchmark takes: the model, the photos it is sent, where the table goes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "artifacts" / "hymenoptera",
                    help="a version directory, or artifacts/<name> (follows LATEST)")
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "hymenoptera_data" / "val")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    return ap


def parse_with_model(ap: argparse.ArgumentParser):
    """(arguments, the model's version directory, its card)."""
    args = ap.parse_args()
    version = resolve_path(args.model)
    return args, version, load_card(version)


def by_photo_size(args, version: Path, card) -> str:
    """The batching service at each concurrency, sent the same 16 photos as shot and re-encoded at phone sizes."""
    paths = sorted(args.data.rglob("*.jpg"))[:16]
    arrays = np.stack([preprocess(p.read_bytes(), card.spec, 10**9) for p in paths])
    raw = {c: raw_ort(version, arrays, c) for c in args.concurrency}
    lines = ["| photos | concurrency | img/s | p50 ms | p95 ms | p99 ms | p99 / p50 | mean batch | decode ms/img | "
             "service / raw ORT |", "|---|---|---|---|---|---|---|---|---|---|"]
    srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_MAX_BATCH_SIZE": str(max(args.concurrency)),
                  "SERVING_MAX_LATENCY_MS": "5000"}, Path(os.environ.get("TMPDIR", "/tmp")) / "bench-serve-sizes.log")
    try:
        assert srv.wait_ready(), "service did not become ready"
        for size in args.photo_sizes:
            blobs = reencoded(paths, PHOTO_SIZES[size])
            t0 = time.perf_counter()
            for b in blobs:
                preprocess(b, card.spec, 10**9)
            decode_ms = (time.perf_counter() - t0) / len(blobs) * 1000
            for c in args.concurrency:
                r = load(srv.url, blobs, c, max(args.requests, 2 * c))
                lines.append(f"| {size} | {c} | {r['img_s']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
                             f"{r['p99'] / r['p50']:.2f} | {r['mean_batch']:.1f} | {decode_ms:.1f} | "
                             f"{r['img_s'] / raw[c]:.2f} |")
                print(lines[-1], flush=True)
    finally:
        srv.stop()
    return "\n".join(lines)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # a time limit's SIGTERM still stops the servers started
    ap = service_bench_parser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--photo-sizes", nargs="+", choices=list(PHOTO_SIZES),
                    help="instead of batching on/off: the batching service sent the same photos at these sizes")
    args, version, card = parse_with_model(ap)
    if args.photo_sizes:
        table = by_photo_size(args, version, card)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = (f"\n### bench/serve.py --photo-sizes: {card.name} ({card.image_size} px), {stamp}, "
                f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU, load generator on the same cores"
                f"\n\n{table}\n")
        print(text)
        with open(args.results, "a") as f:
            f.write(text)
        return
    blobs = [p.read_bytes() for p in sorted(args.data.rglob("*.jpg"))[:64]]
    t0 = time.perf_counter()
    arrays = np.stack([preprocess(b, card.spec, 10**9) for b in blobs])
    decode_ms = (time.perf_counter() - t0) / len(blobs) * 1000
    raw = {c: raw_ort(version, arrays, c) for c in args.concurrency}
    rows = {}
    for batching in ("true", "false"):
        srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_BATCHING": batching,
                      "SERVING_MAX_BATCH_SIZE": str(max(args.concurrency)), "SERVING_MAX_LATENCY_MS": "1000"},
                     Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{batching}.log")
        try:
            assert srv.wait_ready(), "service did not become ready"
            for c in args.concurrency:
                rows[(batching, c)] = load(srv.url, blobs, c, max(args.requests, 2 * c))
        finally:
            srv.stop()
    head = ("| concurrency | batching img/s | p50 ms | p95 ms | p99 ms | mean batch | no-batching img/s | "
            "batching / no-batching | raw ORT img/s (batch=c) | service / raw ORT |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = []
    for c in args.concurrency:
        on, off = rows[("true", c)], rows[("false", c)]
        lines.append(f"| {c} | {on['img_s']:.1f} | {on['p50']:.0f} | {on['p95']:.0f} | {on['p99']:.0f} | "
                     f"{on['mean_batch']:.1f} | {off['img_s']:.1f} | {on['img_s'] / off['img_s']:.2f} | {raw[c]:.1f} | "
                     f"{on['img_s'] / raw[c]:.2f} |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/serve.py: {card.name} ({getattr(card, 'backbone', '?')}, {card.image_size} px), {stamp}, "
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
            f"SERVING_DEVICE={os.environ.get('SERVING_DEVICE', 'auto')}, load generator on the same cores\n\n"
            + "\n".join([head, *lines]) +
            f"\n\ndecode + resize + crop per image (contract.preprocess, real JPEGs): {decode_ms:.1f} ms\n")
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
