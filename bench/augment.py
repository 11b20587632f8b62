"""Augmenting CIFAR-size images: per image with PIL in DataLoader workers vs whole uint8 batches on the device.

python -m bench.augment [--images 2048] [--size 32] [--batch 256]

Builds an in-memory uint8 dataset of real photos (hymenoptera, resized to size x size, repeated to --images), then
times producing augmented float batches both ways in one run: the loader path (torchvision v2 RandomResizedCrop +
flip + colour jitter on PIL images, 0 and N workers) and training.batch_augment (crop via roi_align, flip, jitter
on the tensor batch; CPU here, the training GPU in production). Appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.batch_augment import BatchAugment
from training.config import AugmentConfig, DataConfig
from training.data import ImageSet
from training.loader import EpochSampler, train_loader
from training.transforms import train_transform

ROOT = Path(__file__).resolve().parents[1]

def photos(root: Path, size: int, n: int) -> ImageSet:
    files = sorted(root.rglob("*.jpg"))
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in files]
    idx = [i % len(arrays) for i in range(n)]
    return ImageSet(["x"], [0] * n, None, np.stack([arrays[i] for i in idx]))


def loader_rate(images: ImageSet, size: int, batch: int, workers: int, aug: AugmentConfig) -> float:
    data = DataConfig(image_size=size, resize_size=size, num_workers=workers)
    sampler = EpochSampler(len(images), 0, batch)
    loader = train_loader(images, train_transform(data, aug), sampler, workers, False)
    t, n = time.perf_counter(), 0
    for x, _ in loader:
        x = x.float().div_(255)
        n += len(x)
    return n / (time.perf_counter() - t)


def device_rate(images: ImageSet, size: int, batch: int, aug: AugmentConfig) -> float:
    array = torch.from_numpy(images.array)
    augment = BatchAugment(size, aug)
    order = torch.randperm(len(array))
    t, n = time.perf_counter(), 0
    for idx in order.split(batch):
        x = augment(array[idx])
        n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "hymenoptera_data")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    images = photos(args.data, args.size, args.images)
    aug = AugmentConfig(rotation=0, color_jitter=0.2)
    rows = {"PIL per image, DataLoader 0 workers": loader_rate(images, args.size, args.batch, 0, aug),
            f"PIL per image, DataLoader {args.workers} workers": loader_rate(images, args.size, args.batch,
                                                                            args.workers, aug),
            "uint8 batch, training.batch_augment (CPU)": device_rate(images, args.size, args.batch, aug)}
    base = rows["PIL per image, DataLoader 0 workers"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"\n### bench/augment.py: {args.images} real photos at {args.size} px, batch {args.batch}, crop + flip + "
        f"colour jitter, {stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU\n",
        "| path | augmented img/s | vs PIL, 0 workers |", "|---|---|---|",
        *[f"| {k} | {v:.0f} | {v / base:.1f} |" for k, v in rows.items()], ""])
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
