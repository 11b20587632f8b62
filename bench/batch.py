"""Batch prediction against onnxruntime alone and against the HTTP service, and its memory over a large archive.

python -m bench.batch --model artifacts/hymenoptera [--images 10000] [--small 1000]

In one run, on the same real photos as shot (the hymenoptera JPEGs, repeated under new names up to --images):
1. onnxruntime alone, model.onnx at batch 32 on pixels decoded beforehand: the ceiling for any server;
2. `python -m serving.batch` (fp32, batch 32) over --small images and over --images images: images per second
   (decoding included) and the peak resident memory of the process, which must not grow with the archive;
3. the HTTP service (fp32) sent the same photos at concurrency 32 by bench/serve.py's client.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from bench.serve import ROOT, load, raw_ort
from contract.card import load_card
from contract.preprocess import preprocess
from contract.publish import resolve_path
from serving.launch import Server


def archive(photos: list[Path], n: int, folder: Path) -> Path:
    """n files under folder/, the photos in turn, hard links (no copies) in folders of 1,000."""
    for i in range(n):
        target = folder / f"{i // 1000:03d}" / f"{i:06d}{photos[i % len(photos)].suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photos[i % len(photos)], target)
    return folder


def run_batch(version: Path, source: Path, output: Path) -> dict:
    """serving.batch in a child process: wall-clock img/s and its peak RSS (sampled every 0.1 s)."""
    start = time.perf_counter()
    with open(output.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving.batch", "--model", str(version), "--input",
                                 str(source), "--output", str(output), "--precision", "fp32", "--batch-size", "32"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        child, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, child.memory_info().rss)
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(output.with_suffix(".log").read_text()[-2000:])
    images = sum(1 for p in source.rglob("*") if p.is_file())
    return {"images": images, "img_s": images / wall, "peak_rss_mb": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "artifacts" / "hymenoptera")
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "hymenoptera_data")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--requests", type=int, default=640)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    version = resolve_path(args.model)
    card = load_card(version)
    photos = sorted(p for p in args.data.rglob("*.jpg"))
    arrays = np.stack([preprocess(p.read_bytes(), card.spec, 10**9) for p in photos[:64]])
    raw = raw_ort(version, arrays, 32)
    print(f"onnxruntime alone, batch 32: {raw:.1f} img/s", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (args.small, args.images):
            rows[n] = run_batch(version, archive(photos, n, tmp / f"in-{n}"), tmp / f"out-{n}")
            print(f"serving.batch, {n} images: {rows[n]}", flush=True)
    srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_PRECISION": "fp32", "SERVING_MAX_BATCH_SIZE": "32"},
                 Path(os.environ.get("TMPDIR", "/tmp")) / "bench-batch-serve.log")
    try:
        assert srv.wait_ready(), "service did not become ready"
        blobs = [p.read_bytes() for p in photos[:64]]
        http = load(srv.url, blobs, 32, args.requests)["img_s"]
    finally:
        srv.stop()
    print(f"HTTP service, concurrency 32: {http:.1f} img/s", flush=True)
    lines = ["| what | images | img/s | vs onnxruntime alone | vs HTTP at c = 32 | peak RSS MB |",
             "|---|---|---|---|---|---|",
             f"| onnxruntime alone, batch 32, pixels decoded beforehand | 64 | {raw:.1f} | 1.00 | {raw / http:.2f} | |"]
    lines += [f"| serving.batch, batch 32, decoding included | {r['images']} | {r['img_s']:.1f} | "
              f"{r['img_s'] / raw:.2f} | {r['img_s'] / http:.2f} | {r['peak_rss_mb']:.0f} |" for r in rows.values()]
    lines.append(f"| HTTP service (/predict), concurrency 32 | {args.requests} | {http:.1f} | {http / raw:.2f} | "
                 "1.00 | |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/batch.py: {card.name} ({card.backbone}, {card.image_size} px, fp32), photos as shot, "
            f"{stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU\n\n" + "\n".join(lines) + "\n")
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
