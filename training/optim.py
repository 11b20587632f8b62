"""Per-phase optimiser and learning-rate schedule: which parameters train, at which rate, on which curve."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .model import Classifier


def trainable_stages(cfg: TrainConfig, phase: int, epoch: int) -> list[str]:
    """Phase 1: none (head only). Phase 2: the chosen stages, or with gradual unfreezing one more every k epochs."""
    if phase == 1:
        return []
    stages = cfg.stages_to_unfreeze()
    if cfg.phase2.gradual_every:
        return stages[:min(len(stages), 1 + epoch // cfg.phase2.gradual_every)]
    return stages


def lr_factor(cfg: TrainConfig, world: int) -> float:
    """Linear scaling (Goyal et al., 2017): the global batch is world x data.batch_size, so is the rate."""
    return float(world) if cfg.lr_scaling == "linear" else 1.0


def make_optimizer(model: Classifier, cfg: TrainConfig, phase: int, lr_factor: float = 1.0) -> torch.optim.Optimizer:
    """AdamW. Phase 2 gets discriminative rates: the pretrained backbone moves more slowly than the new head.
    Every stage that may unfreeze during the phase has its group from the start; frozen parameters get no
    gradient, and AdamW skips them, so gradual unfreezing needs no new optimiser (and resumes exactly)."""
    if phase == 1:
        groups = [{"params": list(model.head.parameters()), "lr": cfg.phase1.lr * lr_factor, "name": "head"}]
        return torch.optim.AdamW(groups, weight_decay=cfg.phase1.weight_decay, fused=_fused(cfg, model))
    groups = [{"params": list(model.head.parameters()), "lr": cfg.phase2.head_lr * lr_factor, "name": "head"}]
    for stage in cfg.stages_to_unfreeze():
        groups.append({"params": list(model.stages[stage].parameters()), "lr": cfg.phase2.backbone_lr * lr_factor,
                       "name": stage})
    return torch.optim.AdamW(groups, weight_decay=cfg.phase2.weight_decay, fused=_fused(cfg, model))


def _fused(cfg: TrainConfig, model: Classifier) -> bool:
    """One kernel for the whole update instead of a loop over tensors; default on CUDA only, where it pays."""
    if cfg.fused_optimizer is not None:
        return cfg.fused_optimizer
    return next(model.parameters()).is_cuda


class Schedule:
    """Linear warm-up (per step), then cosine decay (per step) or reduce-on-plateau (per epoch) or constant."""

    def __init__(self, optimizer, kind: str, warmup_epochs: float, epochs: int, steps_per_epoch: int, mode: str):
        self.kind = kind
        self.warmup = max(0, int(round(warmup_epochs * steps_per_epoch)))
        total = max(1, epochs * steps_per_epoch)
        warm = self.warmup

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if kind == "cosine":
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
            return 1.0

        self.steps = 0
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.3, patience=1)
                        if kind == "plateau" else None)

    def after_step(self) -> None:
        self.steps += 1
        if self.kind == "cosine" or self.steps <= self.warmup:  # plateau owns the rate once warm-up is over
            self.lambda_lr.step()

    def after_epoch(self, metric: float) -> None:
        if self.plateau is not None and self.steps >= self.warmup:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "lambda": self.lambda_lr.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.lambda_lr.load_state_dict(state["lambda"])
        if self.plateau and state["plateau"]:
            self.plateau.load_state_dict(state["plateau"])


def class_weights(counts: list[int]) -> torch.Tensor:
    """n / (C * n_c), as scikit-learn's 'balanced': each class contributes equally to the loss."""
    counts_t = torch.tensor(counts, dtype=torch.float32)
    return counts_t.sum() / (len(counts) * counts_t.clamp(min=1))
