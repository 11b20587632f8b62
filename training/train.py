"""Two-phase fine-tuning: phase 1 trains the head on a frozen backbone, phase 2 unfreezes the top stages.

Every random choice is a function of (seed, phase, epoch, batch) (training.seeds), and the full state is
checkpointed each epoch and on SIGTERM (training.train_checkpoints), so a pod killed and restarted finishes with
the same weights as one that never stopped (with deterministic kernels: the default on CPU, `deterministic=true` on
CUDA). Batches come from training.train_batches.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import distributed, feature_cache, metrics
from .config import TrainConfig
from .data import Splits
from .log import event, progress
from .model import Classifier, set_trainable, train_mode
from .optim import Schedule, lr_factor, make_optimizer, trainable_stages
from .runtime import amp_dtype, autocast
from .seeds import derive, seed_all
from .state import EarlyStopping, TrainState
from .train_batches import TrainBatches
from .train_checkpoints import TrainCheckpoints

__all__ = ["EXIT_PREEMPTED", "EarlyStopping", "Preempted", "TrainState", "Trainer"]
EXIT_PREEMPTED = 75  # "temporary failure": the Job's podFailurePolicy treats it as a restart, not a failure


class Preempted(SystemExit):
    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


def validate(trainer: Trainer, phase: int) -> dict:
    """The epoch's validation metrics: on the cached features where phase 1 trains on them (the backbone is frozen,
    so they are what it would compute), else on the images."""
    model, cache = trainer.model, trainer.cache
    if phase == 1 and cache is not None:
        model.head.eval()
        with torch.no_grad():
            logits = model.head(cache.val.to(trainer.device)).float().cpu().numpy()
        labels = cache.val_labels.numpy()
    else:
        logits, labels = metrics.predict(model, trainer.data.val_loader, trainer.device, trainer.cfg.channels_last,
                                         trainer.amp)
    q = metrics.quick(logits, labels)
    return {"val_loss": q["loss"], "val_acc": q["acc"], "val_macro_f1": q["macro_f1"]}


class Trainer:
    def __init__(self, cfg: TrainConfig, splits: Splits, model: Classifier, device: torch.device,
                 d: distributed.Dist = distributed.Dist(), checkpoints: bool = True,
                 features_path: Path | None = None, on_epoch: Callable[[dict], None] | None = None):
        """For a search's trials (training.tune): no checkpoints (a killed trial reruns whole), one feature cache for
        all, and a callback after each epoch's validation (Optuna's report; it may raise to prune the trial)."""
        self.cfg, self.splits, self.model, self.device, self.d = cfg, splits, model, device, d
        self.net, self.net_stages = model, None  # the DDP (and compile) wrapper, rebuilt as stages unfreeze
        self.out = Path(cfg.output_dir)
        self.amp = amp_dtype(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.stopper = EarlyStopping(cfg.early_stop.metric, cfg.early_stop.patience)
        self.data = TrainBatches(cfg, splits, device, d)
        weights = self.data.class_weights.to(device) if cfg.data.balance == "loss_weights" else None
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.augment.label_smoothing)
        self.checkpoints = TrainCheckpoints(self.out, cfg, model, self.scaler, d.main and checkpoints)
        self.features_path = features_path or self.out / "checkpoints" / "phase1_features.pt"
        self.on_epoch = on_epoch
        self.stop_requested = False
        self.cache: feature_cache.FeatureCache | None = None
        self.cache_seconds: float | None = None  # what building the phase-1 cache cost (it is freed after phase 1)
        self.state = TrainState()

    def fit(self) -> None:
        resumed, ckpt = self.checkpoints.resume(), None
        if resumed is not None:
            self.state, ckpt = resumed
        signal.signal(signal.SIGTERM, self._on_sigterm)
        for phase in (1, 2):
            if self.state.phase == phase:
                self.run_phase(phase, ckpt)
                ckpt = None

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True  # finish the current step, checkpoint, exit EXIT_PREEMPTED

    # ---- one phase ---------------------------------------------------------------------------------------------
    def phase1_features(self, epochs_done: int = 0) -> feature_cache.FeatureCache | None:
        """The feature cache phase 1 trains on, loaded or built (None where it cannot or need not be used)."""
        return feature_cache.for_phase1(self.features_path, self.model, self.splits, self.cfg, self.device, self.amp,
                                        self.d, epochs_done)

    def run_phase(self, phase: int, resumed: dict | None) -> None:
        pcfg, st = (self.cfg.phase1 if phase == 1 else self.cfg.phase2), self.state
        batchnorm = "frozen" if phase == 1 else self.cfg.phase2.batchnorm
        set_trainable(self.model, trainable_stages(self.cfg, phase, st.epoch), batchnorm)
        if phase == 1:
            self.cache = self.phase1_features(st.epoch)
            self.cache_seconds = self.cache.seconds if self.cache is not None else None
        optimizer = make_optimizer(self.model, self.cfg, phase, lr_factor(self.cfg, self.d.world))
        schedule = Schedule(optimizer, pcfg.schedule, pcfg.warmup_epochs, pcfg.epochs,
                            self.data.sampler.batches_per_epoch(), self.stopper.mode)
        if resumed and resumed["optimizer"] is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            schedule.load_state_dict(resumed["schedule"])
        for epoch in range(st.epoch, pcfg.epochs):
            stages = trainable_stages(self.cfg, phase, epoch)
            set_trainable(self.model, stages, batchnorm)
            self.wrap_for(phase, stages)
            t0 = time.perf_counter()
            row = {"phase": phase, "epoch": epoch + 1, "trainable": stages or ["head"],
                   **self.train_epoch(phase, epoch, optimizer, schedule), **validate(self, phase),
                   "lr": max(g["lr"] for g in optimizer.param_groups)}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if self.end_epoch(row, phase, epoch, schedule, optimizer):
                break
        self.cache = None
        self.checkpoints.restore_best()
        st.phase, st.epoch, st.batch, st.patience, st.running = phase + 1, 0, 0, 0, None
        self.checkpoints.save(st)

    def end_epoch(self, row: dict, phase: int, epoch: int, schedule: Schedule, optimizer) -> bool:
        """Record the epoch, checkpoint it; True when early stopping ends the phase."""
        st, value = self.state, row[self.cfg.early_stop.metric]
        schedule.after_epoch(value)
        if self.stopper.update(st, value, (phase, epoch + 1)):
            self.checkpoints.keep_best()
        st.history.append(row)
        st.epoch = epoch + 1
        event("epoch", **{k: v for k, v in row.items() if k != "trainable"})
        self.checkpoints.save(st, optimizer, schedule)
        if self.on_epoch is not None:
            self.on_epoch(row)
        if distributed.any_rank(self.stop_requested, self.d, self.device):
            raise Preempted()  # the epoch's checkpoint is already written
        if self.stopper.should_stop(st):
            event("early stop", phase=phase, best=st.best, best_at=str(st.best_where))
            return True
        return False

    # ---- one epoch ---------------------------------------------------------------------------------------------
    def train_epoch(self, phase: int, epoch: int, optimizer, schedule) -> dict:
        st = self.state
        running = st.running or {"loss": 0.0, "correct": 0, "seen": 0}
        self.data.sampler.set_epoch(epoch + 1000 * phase, st.batch)
        train_mode(self.model)
        cache = self.cache if phase == 1 else None
        net = self.model.head if cache is not None else self.net
        bar = progress(self.data.epoch(epoch, cache), self.data.sampler.batches_per_epoch() - st.batch,
                       f"phase {phase} epoch {epoch + 1}")
        for inputs, labels in bar:
            seed_all(derive(self.cfg.seed, "step", phase, epoch, st.batch, self.d.rank))
            y = labels.to(self.device, non_blocking=True)
            x, target = (inputs.to(self.device), y) if cache is not None else self.data.image_input(inputs, y)
            with autocast(self.device, self.amp):
                logits = net(x)
                loss = self.criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            schedule.after_step()
            running["loss"] += loss.item() * len(y)  # .item() syncs with the GPU; the loss is small next to a step
            running["correct"] += int((logits.argmax(1) == y).sum())
            running["seen"] += len(y)
            st.batch += 1
            bar.set_postfix(loss=f"{running['loss'] / running['seen']:.3f}",
                            acc=f"{running['correct'] / running['seen']:.3f}")
            if distributed.any_rank(self.stop_requested, self.d, self.device):
                self.checkpoint_mid_epoch(running, optimizer, schedule, phase, epoch)
        st.batch, st.running = 0, None
        loss, correct, seen = distributed.sum_all([running["loss"], running["correct"], running["seen"]], self.d,
                                                  self.device)
        return {"train_loss": loss / seen, "train_acc": correct / seen}

    def checkpoint_mid_epoch(self, running: dict, optimizer, schedule, phase: int, epoch: int) -> None:
        totals = distributed.sum_all([running["loss"], running["correct"], running["seen"]], self.d, self.device)
        self.state.running = dict(zip(("loss", "correct", "seen"), totals))
        self.checkpoints.save(self.state, optimizer, schedule)
        event("SIGTERM: " + ("checkpoint written" if self.checkpoints.main else "a search's trial, rerun on resume")
              + ", exiting", phase=phase, epoch=epoch, batch=self.state.batch)
        raise Preempted()

    # ---- around the phases -------------------------------------------------------------------------------------
    def wrap_for(self, phase: int, stages: list[str]) -> None:
        """DDP (and torch.compile) are rebuilt when the trainable set changes: DDP's unused-parameter checks and the
        compiled graph both depend on it."""
        if self.net_stages != (phase, tuple(stages)):
            self.net = distributed.wrap(self.model, self.d, self.device)
            if self.cfg.compile:
                self.net = torch.compile(self.net)
            self.net_stages = (phase, tuple(stages))
