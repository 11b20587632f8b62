"""Training speed, variants side by side in one run: phase 1 with the backbone every epoch vs on cached features,
the input pipeline's share of a phase-2 step for several DataLoader worker counts, and the compute variants of a
training step (channels_last, fused AdamW, torch.compile, and bf16 autocast where CUDA is present).

python -m bench.train [--config training/configs/hymenoptera.yaml] [--set key=value ...] [--epochs 6]

Phase 1 table: head-epoch img/s (training part of each epoch), what building the cache cost, and the test accuracy
after phase 1 for both (same seed, same epochs): the cache must be faster at equal accuracy.
Pipeline table: one phase-2 epoch (top stage unfrozen) per worker count; "waiting" is the time the training loop
spent blocked on the DataLoader, as a share of the step time. Step table: the compute variants of one training step
(--trainable all: every layer, as published ResNet50 training figures are). --tables picks which; each is appended
to bench/RESULTS.md as it is done, the step table row by row.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

from training import metrics
from training.config import load_config
from training.data import load_splits
from training.job import logits_of
from training.model import build_model, set_trainable, train_mode
from training.runtime import setup_runtime
from training.train import Trainer

ROOT = Path(__file__).resolve().parents[1]

def phase1(cfg, splits, device) -> dict:
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, splits, build_model(cfg.model, len(splits.classes)).to(device), device)
    epoch_s = []
    train_epoch = trainer.train_epoch

    def timed_epoch(*args):
        t = time.perf_counter()
        row = train_epoch(*args)
        epoch_s.append(time.perf_counter() - t)
        return row

    trainer.train_epoch = timed_epoch
    t0 = time.perf_counter()
    trainer.run_phase(1, None)
    wall = time.perf_counter() - t0
    logits, labels = logits_of(trainer.model, splits.test, cfg, device)
    images = trainer.data.sampler.batches_per_epoch() * cfg.data.batch_size
    return {"img_s": images * len(epoch_s) / sum(epoch_s), "cache_s": trainer.cache_seconds or 0.0, "wall": wall,
            "epochs": len(epoch_s), "test_acc": metrics.quick(logits, labels)["acc"]}


def pipeline(cfg, splits, device, workers: int) -> dict:
    """One phase-2 epoch; time blocked in the loader vs total."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.num_workers = workers
    model = build_model(cfg.model, len(splits.classes)).to(device)
    trainer = Trainer(cfg, splits, model, device)
    set_trainable(model, cfg.stages_to_unfreeze(), "frozen")
    train_mode(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer.data.sampler.set_epoch(0)
    wait = 0.0
    t0 = time.perf_counter()
    it = iter(trainer.data.train_loader)
    n = 0
    while True:
        t = time.perf_counter()
        try:
            images, labels = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t
        x, y = trainer.data.image_input(images, labels)
        loss = trainer.criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(labels)
    total = time.perf_counter() - t0
    return {"img_s": n / total, "wait": wait / total, "step_ms": 1000 * total / max(1, n // cfg.data.batch_size)}


def step_variants(cfg, splits, device, steps: int, trainable: str) -> Iterator[tuple[str, dict]]:
    """Training steps on a fixed random batch already on the device, so only the compute differs: fp32 vs
    channels_last vs fused AdamW vs torch.compile, with bf16 autocast before compile where CUDA is present (so a
    run cut short during compilation still has it). trainable: "phase2" (the top stages, as phase 2 trains) or
    "all" (every layer, as the published ResNet50 training figures). Yields (name, row) as each is measured."""
    variants = {"fp32, contiguous": dict(channels_last=False, fused=False, compile=False, amp=False),
                "+ channels_last": dict(channels_last=True, fused=False, compile=False, amp=False),
                "+ fused AdamW": dict(channels_last=True, fused=True, compile=False, amp=False)}
    if device.type == "cuda":
        variants["+ bf16 autocast"] = dict(channels_last=True, fused=True, compile=False, amp=True)
    variants["+ torch.compile"] = dict(channels_last=True, fused=True, compile=True, amp=device.type == "cuda")
    bs, size = cfg.data.batch_size, cfg.data.image_size
    x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=device).float().div_(255)
    y = torch.randint(0, len(splits.classes), (bs,), device=device)
    for name, v in variants.items():
        torch.manual_seed(0)
        model = build_model(cfg.model, len(splits.classes)).to(device)
        if trainable == "phase2":
            set_trainable(model, cfg.stages_to_unfreeze(), "frozen")
        train_mode(model)
        inp = x
        if v["channels_last"]:
            model, inp = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        net = torch.compile(model) if v["compile"] else model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=v["fused"])
        dtype = torch.bfloat16 if v["amp"] else None

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(net(inp).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = time.perf_counter()
        step()  # the first step pays for compilation and allocation
        first = time.perf_counter() - t
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        yield name, {"img_s": steps * bs / (time.perf_counter() - t), "first_s": first}


def write(path: Path, text: str) -> None:
    print(text, flush=True)
    with open(path, "a") as f:
        f.write(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "hymenoptera.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per compute variant")
    ap.add_argument("--tables", nargs="+", choices=["phase1", "pipeline", "steps"],
                    default=["phase1", "pipeline", "steps"])
    ap.add_argument("--trainable", choices=["phase2", "all"], default="phase2",
                    help="which layers the compute variants train (all: as published ResNet50 training figures)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    base = ["model.backbone=efficientnet_lite0", f"phase1.epochs={args.epochs}", "augment.mixup_alpha=0",
            "early_stop.patience=99", "output_dir=/tmp/bench-train"]
    cfg = load_config(args.config, base + args.overrides)
    device = setup_runtime(cfg)
    torch.use_deterministic_algorithms(False)
    splits = load_splits(cfg.data, cfg.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (f"{stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
             f"{'CUDA ' + torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}")
    write(args.results, f"\n### bench/train.py: {cfg.model.backbone} at {cfg.data.image_size} px, "
                        f"{len(splits.train)} training images, {where}\n")
    # the step table first: it is the one a cut-short run on a GPU must still have, row by row
    if "steps" in args.tables:
        layers = "every layer trained" if args.trainable == "all" else "phase 2: top stages unfrozen"
        write(args.results, f"Training-step compute ({layers}, batch {cfg.data.batch_size}, fixed batch already on "
                            f"the device, no loader, {args.steps} timed steps):\n\n"
                            "| variant (cumulative) | img/s | vs fp32 | first step s |\n|---|---|---|---|")
        fp32 = None
        for name, row in step_variants(cfg, splits, device, args.steps, args.trainable):
            fp32 = fp32 or row["img_s"]  # the first variant, plain fp32, is what the others are set against
            write(args.results, f"| {name} | {row['img_s']:.1f} | {row['img_s'] / fp32:.2f} | {row['first_s']:.1f} |")
    if "phase1" in args.tables:
        write(args.results, phase1_table(cfg, splits, device, args.epochs))
    if "pipeline" in args.tables:
        pipe = {w: pipeline(cfg, splits, device, w) for w in args.workers}
        write(args.results, "\n".join([
            "\nInput pipeline (one phase-2 epoch, top stage unfrozen):\n",
            "| DataLoader workers | img/s | ms per step | time waiting for data |", "|---|---|---|---|",
            *[f"| {w} | {p['img_s']:.1f} | {p['step_ms']:.0f} | {100 * p['wait']:.0f} % |" for w, p in pipe.items()]]))


def phase1_table(cfg, splits, device, epochs: int) -> str:
    rows = {}
    for mode in ("never", "always"):
        c = cfg.model_copy(deep=True)
        c.phase1.feature_cache = mode
        c.output_dir = Path(f"/tmp/bench-train-{mode}")
        shutil.rmtree(c.output_dir, ignore_errors=True)  # a saved cache or checkpoint would skip the work measured
        rows[mode] = phase1(c, splits, device)
    a, b = rows["never"], rows["always"]
    return "\n".join([
        f"\nPhase 1 ({epochs} epochs, frozen backbone, {cfg.phase1.cache_views} cached views):\n",
        "| variant | head-epoch img/s | cache build s | phase 1 wall s | test acc after phase 1 |",
        "|---|---|---|---|---|",
        f"| backbone every epoch | {a['img_s']:.1f} | - | {a['wall']:.1f} | {a['test_acc']:.4f} |",
        f"| cached features | {b['img_s']:.1f} | {b['cache_s']:.1f} | {b['wall']:.1f} | {b['test_acc']:.4f} |",
        f"\nhead epochs on cached features: **{b['img_s'] / a['img_s']:.0f}×** the img/s; phase 1 wall "
        f"{a['wall'] / b['wall']:.1f}× shorter; test accuracy {b['test_acc'] - a['test_acc']:+.4f}"])


if __name__ == "__main__":
    main()
