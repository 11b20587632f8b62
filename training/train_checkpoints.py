"""The run's checkpoints: last.pt (everything a resumed run needs, each epoch and on SIGTERM, the previous copy
kept) and best.pt (the weights of the best validation epoch, restored at the end of each phase). The file format
and its checks are training.checkpoint's; this is what goes in and comes back out."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from . import checkpoint
from .config import TrainConfig
from .log import event
from .state import TrainState


class TrainCheckpoints:
    def __init__(self, out: Path, cfg: TrainConfig, model: torch.nn.Module, scaler: torch.amp.GradScaler,
                 main: bool):
        self.last = out / "checkpoints" / "last.pt"
        self.best = out / "checkpoints" / "best.pt"
        self.cfg, self.model, self.scaler, self.main = cfg, model, scaler, main
        self.best_state = None  # every rank holds the best weights: restoring them waits on no file

    def save(self, state: TrainState, optimizer=None, schedule=None) -> None:
        if not self.main:
            return
        checkpoint.atomic_save({
            "state": asdict(state), "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "schedule": schedule.state_dict() if schedule else None, "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(), "config": self.cfg.model_dump(mode="json"),
        }, self.last, keep_previous=True)

    def resume(self) -> tuple[TrainState, dict] | None:
        """The newest usable checkpoint loaded into the model, scaler and RNGs (run identity already vouched that it
        is this run's): its state, and the raw checkpoint for the optimiser and schedule."""
        stale = checkpoint.remove_stale_temporaries(self.last.parent) if self.main else []
        if stale:
            event("removed temporary files of an interrupted checkpoint write", files=stale)
        ckpt, path, problems = checkpoint.load_latest(self.last)
        for problem in problems:
            event(f"warning: {problem}")
        if ckpt is None:
            if problems and self.main:
                checkpoint.quarantine(self.last)
                event("warning: no usable checkpoint, starting from the beginning; unusable files renamed *.corrupt")
            return None
        self.model.load_state_dict(ckpt["model"])
        state = TrainState(**ckpt["state"])
        if not self.main:
            state.running = None  # partial-epoch sums were saved reduced; rank 0 alone carries them
        self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(ckpt["rng"])
        event("resumed", phase=state.phase, epoch=state.epoch, batch=state.batch, checkpoint=path.name)
        return state, ckpt

    def keep_best(self) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.main:
            checkpoint.atomic_save(self.model.state_dict(), self.best)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.best.is_file():
            self.model.load_state_dict(checkpoint.load(self.best))
