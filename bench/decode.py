"""Decode + resize + crop per image, by photo size: a full JPEG decode vs libjpeg's DCT-scaled decode (the contract's).

python -m bench.decode [--data ../shared/data/hymenoptera_data] [--photos 16] [--resize 256 --size 224]

The real test photos as they are (about 0.2 MP) and the same photos re-encoded at 12 MP and 24 MP (phone sizes),
each preprocessed both ways on one core, in alternating rounds (the median counts). Prints ms per image, the speed-up,
the CPU cost of a phone photo against a small one, and how far the pixels move (mean / max levels of 255).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from contract.preprocess import PreprocessSpec, decode, preprocess, resize_crop

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"as shot (~0.2 MP)": None, "12 MP": (4000, 3000), "24 MP": (6000, 4000)}


def full_decode(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    im, extent = decode(data, 1 << 40, None)  # no draft: every pixel decoded
    return resize_crop(im, spec, extent)


def reencoded(paths: list[Path], size) -> list[bytes]:
    out = []
    for p in paths:
        if size is None:
            out.append(p.read_bytes())
            continue
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def ms_per_image(fn, blobs: list[bytes], spec: PreprocessSpec) -> float:
    t0 = time.process_time()  # CPU time of this process: the cost, not the wait
    for b in blobs:
        fn(b, spec)
    return 1000 * (time.process_time() - t0) / len(blobs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core: ms per image are core-ms
    spec = PreprocessSpec(args.resize, args.size, "bilinear")
    paths = sorted((args.data / "val").rglob("*.jpg"))[:args.photos]
    rows, small = [], None
    for label, size in SIZES.items():
        blobs = reencoded(paths, size)
        full, draft = [], []
        for _ in range(args.rounds):
            full.append(ms_per_image(full_decode, blobs, spec))
            draft.append(ms_per_image(lambda b, s: preprocess(b, s, 1 << 40), blobs, spec))
        diffs = [np.abs(full_decode(b, spec).astype(int) - preprocess(b, spec, 1 << 40)) for b in blobs]
        f, d = statistics.median(full), statistics.median(draft)
        small = small or d
        rows.append(f"| {label} | {f:.1f} | {d:.1f} | {f / d:.1f}x | {d / small:.1f}x | "
                    f"{max(x.mean() for x in diffs):.2f} / {max(x.max() for x in diffs)} |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"\n### bench/decode.py: {len(paths)} real photos, resize {args.resize} / crop {args.size}, {stamp}, "
        f"{platform.machine()}, 1 core\n",
        "| photo size | full decode ms/img | DCT-scaled decode ms/img (the contract's) | speed-up | vs as shot | "
        "pixel difference mean / max |", "|---|---|---|---|---|---|", *rows, ""])
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
