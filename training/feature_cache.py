"""Phase 1 on cached features.

In phase 1 the backbone is frozen, BatchNorm included, so it maps a given input image to the same pooled features
every epoch. Run it once over `cache_views` augmented views of each training image and once over the validation
split, keep the features, and train the head on them: a head epoch then costs a matrix multiply per batch instead
of a backbone pass. Epoch e trains on view e mod cache_views; view v of image i is augmented with a seed that is a
function of (seed, v, i), so the cache, and a run resumed from it, is reproducible. The cache is saved next to the
checkpoints (with the usual checksum) and reused on resume when its key (data, augmentation, model, seed) matches.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoint, distributed
from .config import TrainConfig
from .data import Splits
from .loader import SeededImages
from .log import event, progress
from .model import Classifier
from .runtime import autocast, model_input
from .seeds import derive
from .transforms import eval_transform, train_transform


@dataclass
class FeatureCache:
    train: torch.Tensor  # [views, N, D] float32
    train_labels: torch.Tensor  # [N]
    val: torch.Tensor  # [N_val, D]
    val_labels: torch.Tensor
    seconds: float  # what building it cost


def unusable_because(cfg: TrainConfig, world: int) -> str | None:
    """Why the cache cannot (or should not) be used for this run; None when it will be."""
    p1 = cfg.phase1
    if p1.feature_cache == "never":
        return "phase1.feature_cache=never"
    if world > 1:
        return "distributed run (each rank would need every feature)"
    if cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0:
        return "MixUp/CutMix mix images, which features cannot reproduce"
    if p1.feature_cache == "auto" and p1.epochs <= p1.cache_views:
        return f"phase1.epochs={p1.epochs} <= cache_views={p1.cache_views}: caching would not save time"
    return None


# What the cached features depend on: the pixels (preprocessing, the augmentations' settings), the backbone and
# its weights. Not the head (hidden_dim, dropout) nor the loss (label_smoothing, balance): a tuning search varies
# those over one cache (training.tune).
FEATURE_AUGMENTS = ("crop_scale", "hflip", "rotation", "color_jitter", "trivial_augment")


def cache_key(cfg: TrainConfig, splits: Splits) -> str:
    what = {"data": cfg.data.model_dump(mode="json", include={"image_size", "resize_size", "interpolation"}),
            "augment": cfg.augment.model_dump(mode="json", include=set(FEATURE_AUGMENTS)),
            "model": cfg.model.model_dump(mode="json", include={"backbone", "weights"}), "seed": cfg.seed,
            "views": cfg.phase1.cache_views, "train": splits.train.files_digest(), "val": splits.val.files_digest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def view_seed(seed: int, view: int, index: int) -> int:
    return derive(seed, "cache view", view, index)


@torch.no_grad()
def _features(model: Classifier, loader: DataLoader, device: torch.device, channels_last: bool, amp,
              label: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for images, y in progress(loader, len(loader), label):
        with autocast(device, amp):
            f = model.backbone((model_input(images, device, channels_last) - model.mean) / model.std)
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def build(model: Classifier, splits: Splits, cfg: TrainConfig, device: torch.device, amp) -> FeatureCache:
    start = time.perf_counter()
    model.eval()
    d, views = cfg.data, cfg.phase1.cache_views
    tf = train_transform(d, cfg.augment)
    train = []
    for v in range(views):
        keys = [(i, view_seed(cfg.seed, v, i)) for i in range(len(splits.train))]
        loader = DataLoader(SeededImages(splits.train, tf), batch_size=d.eval_batch_size, sampler=keys,
                            num_workers=d.num_workers, pin_memory=device.type == "cuda")
        f, train_labels = _features(model, loader, device, cfg.channels_last, amp, f"feature cache view {v + 1}")
        train.append(f)
    loader = DataLoader(SeededImages(splits.val, eval_transform(d.spec)),
                        batch_size=d.eval_batch_size, num_workers=d.num_workers, pin_memory=device.type == "cuda")
    val, val_labels = _features(model, loader, device, cfg.channels_last, amp, "feature cache val")
    return FeatureCache(torch.stack(train), train_labels, val, val_labels, time.perf_counter() - start)


def load_or_build(path: Path, model: Classifier, splits: Splits, cfg: TrainConfig, device: torch.device, amp,
                  save: bool) -> FeatureCache:
    key = cache_key(cfg, splits)
    if path.is_file():
        try:
            saved = checkpoint.load(path)
            if saved["key"] == key:
                event("feature cache loaded", path=str(path), views=saved["cache"].train.shape[0])
                return saved["cache"]
            event("feature cache is for another configuration; rebuilding", path=str(path))
        except checkpoint.CheckpointError as exc:
            event(f"warning: {exc}; rebuilding the feature cache")
    cache = build(model, splits, cfg, device, amp)
    n = cache.train.shape[0] * cache.train.shape[1] + len(cache.val)
    event("feature cache built", views=cache.train.shape[0], images=n, dim=cache.train.shape[2],
          seconds=round(cache.seconds, 2), img_per_s=round(n / cache.seconds, 1))
    if save:
        checkpoint.atomic_save({"key": key, "cache": cache}, path)
    return cache


def for_phase1(path: Path, model: Classifier, splits: Splits, cfg: TrainConfig, device: torch.device, amp,
               d: distributed.Dist, epochs_done: int) -> FeatureCache | None:
    """The cache phase 1 trains on, or None (said in the log, with why) where it cannot or need not be used."""
    reason = unusable_because(cfg, d.world)
    if reason is not None or epochs_done >= cfg.phase1.epochs:
        event("phase 1 runs the backbone every epoch (no feature cache)", reason=reason or "phase 1 done")
        return None
    return load_or_build(path, model, splits, cfg, device, amp, save=d.main)
