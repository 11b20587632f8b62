"""Two-phase fine-tuning: phase 1 trains the head on a frozen backbone, phase 2 unfreezes the top stages.

Every random choice is a function of (seed, phase, epoch, batch) (training.seeds), and the full state is
checkpointed each epoch and on SIGTERM, so a pod killed and restarted finishes with the same weights as one that
never stopped (with deterministic kernels: the default on CPU, `deterministic=true` on CUDA).
"""
from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, distributed, feature_cache, metrics
from .batch_augment import BatchAugment
from .config import TrainConfig
from .data import Splits
from .loader import EpochSampler, eval_loader, sampled_rows, train_loader
from .log import event, progress
from .model import Classifier, set_trainable, train_mode
from .optim import Schedule, class_weights, make_optimizer, trainable_stages
from .runtime import amp_dtype, autocast, model_input
from .seeds import derive
from .transforms import batch_mixer, eval_transform, train_transform

EXIT_PREEMPTED = 75  # "temporary failure": the Job's podFailurePolicy treats it as a restart, not a failure


class Preempted(SystemExit):
    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


@dataclass
class TrainState:
    """Where the run is, besides weights, optimiser and RNGs; checkpointed as a plain dict."""
    phase: int = 1
    epoch: int = 0  # epochs finished in this phase
    batch: int = 0  # batches finished in this epoch (non-zero in a mid-epoch checkpoint)
    best: float | None = None
    best_where: tuple[int, int] | None = None  # (phase, epoch) of the best validation value
    patience: int = 0  # epochs since it improved
    history: list[dict] = field(default_factory=list)
    running: dict | None = None  # this epoch's partial sums at a mid-epoch checkpoint


@dataclass
class EarlyStopping:
    """Restore-best early stopping on one validation metric; its counters live in TrainState."""
    metric: str
    patience: int

    @property
    def mode(self) -> str:
        return "min" if self.metric == "val_loss" else "max"

    def update(self, st: TrainState, value: float, where: tuple[int, int]) -> bool:
        """Record an epoch's value; True if it is the best so far."""
        better = st.best is None or (value < st.best if self.mode == "min" else value > st.best)
        if better:
            st.best, st.best_where, st.patience = value, where, 0
        else:
            st.patience += 1
        return better

    def should_stop(self, st: TrainState) -> bool:
        return st.patience >= self.patience


class Trainer:
    def __init__(self, cfg: TrainConfig, splits: Splits, model: Classifier, device: torch.device,
                 d: distributed.Dist = distributed.Dist()):
        self.cfg, self.splits, self.model, self.device, self.d = cfg, splits, model, device, d
        self.net, self.net_stages = model, None  # the DDP (and compile) wrapper, rebuilt as stages unfreeze
        self.best_state = None
        self.out = Path(cfg.output_dir)
        self.amp = amp_dtype(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.stopper = EarlyStopping(cfg.early_stop.metric, cfg.early_stop.patience)
        weights = class_weights(splits.train.counts())
        self.criterion = nn.CrossEntropyLoss(weight=weights.to(device) if cfg.data.balance == "loss_weights" else None,
                                             label_smoothing=cfg.augment.label_smoothing)
        sample_w = weights[torch.tensor(splits.train.labels)] if cfg.data.balance == "sampler" else None
        self.sampler = EpochSampler(len(splits.train), cfg.seed, cfg.data.batch_size, sample_w, d.rank, d.world)
        if self.sampler.batches_per_epoch() == 0:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the training split "
                             f"({len(splits.train) // d.world} images per process); lower it")
        pin = device.type == "cuda"
        self.train_loader = train_loader(splits.train, train_transform(cfg.data, cfg.augment), self.sampler,
                                         cfg.data.num_workers, pin)
        self.val_loader = eval_loader(splits.val, eval_transform(cfg.data.resize_size, cfg.data.image_size,
                                                                 cfg.data.interpolation),
                                      cfg.data.eval_batch_size, cfg.data.num_workers, pin)
        self.mixer = batch_mixer(cfg.augment, len(splits.classes))
        self.batch_augment, self.train_array = self._device_augmentation()
        self.stop_requested = False
        self.cache: feature_cache.FeatureCache | None = None
        self.cache_seconds: float | None = None  # what building the phase-1 cache cost (it is freed after phase 1)
        self.state = TrainState()

    def _device_augmentation(self) -> tuple[BatchAugment | None, torch.Tensor | None]:
        if self.cfg.data.augment_on != "device":
            return None, None
        if self.splits.train.array is None:
            raise ValueError("data.augment_on=device needs a dataset held in memory (CIFAR layout); folders of "
                             "image files go through data.augment_on=loader")
        # uint8 on the device (CIFAR-10 is 150 MB), augmented a whole batch at a time
        return BatchAugment(self.cfg.data.image_size, self.cfg.augment), \
            torch.from_numpy(self.splits.train.array).to(self.device)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def save(self, optimizer=None, schedule=None) -> None:
        if not self.d.main:
            return
        checkpoint.atomic_save({
            "state": asdict(self.state), "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "schedule": schedule.state_dict() if schedule else None, "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(), "config": self.cfg.model_dump(mode="json"),
        }, self.last_path, keep_previous=True)

    def try_resume(self) -> dict | None:
        """Load the newest usable checkpoint (run identity already vouched that it is this run's)."""
        stale = checkpoint.remove_stale_temporaries(self.last_path.parent) if self.d.main else []
        if stale:
            event("removed temporary files of an interrupted checkpoint write", files=stale)
        ckpt, path, problems = checkpoint.load_latest(self.last_path)
        for problem in problems:
            event(f"warning: {problem}")
        if ckpt is None:
            if problems and self.d.main:
                checkpoint.quarantine(self.last_path)
                event("warning: no usable checkpoint, starting from the beginning; unusable files renamed *.corrupt")
            return None
        self.model.load_state_dict(ckpt["model"])
        self.state = TrainState(**ckpt["state"])
        if not self.d.main:
            self.state.running = None  # partial-epoch sums were saved reduced; rank 0 alone carries them
        self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(ckpt["rng"])
        event("resumed", phase=self.state.phase, epoch=self.state.epoch, batch=self.state.batch,
              checkpoint=path.name)
        return ckpt

    def install_sigterm(self) -> None:
        def on_term(signum, frame):
            self.stop_requested = True  # finish the current step, checkpoint, exit EXIT_PREEMPTED
        signal.signal(signal.SIGTERM, on_term)

    # ---- one epoch ---------------------------------------------------------------------------------------------
    def batches(self, phase: int, epoch: int):
        """(inputs, labels) of this epoch: cached features (phase 1 with the cache), uint8 images already on the
        device (data.augment_on=device), or decoded and augmented images from the DataLoader."""
        if phase == 1 and self.cache is not None:
            feats = self.cache.train[epoch % len(self.cache.train)]
            return sampled_rows(feats, self.cache.train_labels, self.sampler, self.cfg.data.batch_size)
        if self.batch_augment is not None:
            return sampled_rows(self.train_array, torch.tensor(self.splits.train.labels), self.sampler,
                                self.cfg.data.batch_size)
        return self.train_loader

    def train_epoch(self, phase: int, epoch: int, optimizer, schedule) -> dict:
        st = self.state
        running = st.running or {"loss": 0.0, "correct": 0, "seen": 0}
        self.sampler.set_epoch(epoch + 1000 * phase, st.batch)
        train_mode(self.model)
        cached = phase == 1 and self.cache is not None
        net = self.model.head if cached else self.net
        bar = progress(self.batches(phase, epoch), self.sampler.batches_per_epoch() - st.batch,
                       f"phase {phase} epoch {epoch + 1}")
        for inputs, labels in bar:
            torch.manual_seed(derive(self.cfg.seed, "step", phase, epoch, st.batch, self.d.rank))
            y = labels.to(self.device, non_blocking=True)
            x, target = (inputs.to(self.device), y) if cached else self.image_input(inputs, y)
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
        self.save(optimizer, schedule)
        event("SIGTERM: checkpoint written, exiting", phase=phase, epoch=epoch, batch=self.state.batch)
        raise Preempted()

    def image_input(self, images: torch.Tensor, y: torch.Tensor):
        if self.batch_augment is not None:
            x = self.batch_augment(images)  # uint8 NHWC already on the device -> augmented float NCHW
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = model_input(images, self.device, self.cfg.channels_last)
        return self.mixer(x, y) if self.mixer is not None else (x, y)

    def validate(self, phase: int) -> dict:
        if phase == 1 and self.cache is not None:
            self.model.head.eval()
            with torch.no_grad():
                logits = self.model.head(self.cache.val.to(self.device)).float().cpu().numpy()
            labels = self.cache.val_labels.numpy()
        else:
            logits, labels = metrics.predict(self.model, self.val_loader, self.device, self.cfg.channels_last,
                                             self.amp)
        q = metrics.quick(logits, labels)
        return {"val_loss": q["loss"], "val_acc": q["acc"], "val_macro_f1": q["macro_f1"]}

    # ---- phases ------------------------------------------------------------------------------------------------
    def wrap_for(self, phase: int, stages: list[str]) -> None:
        """DDP (and torch.compile) are rebuilt when the trainable set changes: DDP's unused-parameter checks and the
        compiled graph both depend on it."""
        if self.net_stages != (phase, tuple(stages)):
            self.net = distributed.wrap(self.model, self.d, self.device)
            if self.cfg.compile:
                self.net = torch.compile(self.net)
            self.net_stages = (phase, tuple(stages))

    def run_phase(self, phase: int, resumed: dict | None) -> None:
        pcfg = self.cfg.phase1 if phase == 1 else self.cfg.phase2
        st = self.state
        batchnorm = "frozen" if phase == 1 else self.cfg.phase2.batchnorm
        set_trainable(self.model, trainable_stages(self.cfg, phase, st.epoch), batchnorm)
        if phase == 1:
            self.cache = self.phase1_cache()
            self.cache_seconds = self.cache.seconds if self.cache is not None else None
        optimizer = make_optimizer(self.model, self.cfg, phase, self.lr_factor())
        schedule = Schedule(optimizer, pcfg.schedule, pcfg.warmup_epochs, pcfg.epochs,
                            self.sampler.batches_per_epoch(), self.stopper.mode)
        if resumed and resumed["optimizer"] is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            schedule.load_state_dict(resumed["schedule"])
        for epoch in range(st.epoch, pcfg.epochs):
            stages = trainable_stages(self.cfg, phase, epoch)
            set_trainable(self.model, stages, batchnorm)
            self.wrap_for(phase, stages)
            t0 = time.perf_counter()
            row = {"phase": phase, "epoch": epoch + 1, "trainable": stages or ["head"]}
            row.update(self.train_epoch(phase, epoch, optimizer, schedule))
            row.update(self.validate(phase))
            row["lr"] = max(g["lr"] for g in optimizer.param_groups)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            value = row[self.cfg.early_stop.metric]
            schedule.after_epoch(value)
            if self.stopper.update(st, value, (phase, epoch + 1)):
                self.keep_best()
            st.history.append(row)
            st.epoch = epoch + 1
            event("epoch", **{k: v for k, v in row.items() if k != "trainable"})
            self.save(optimizer, schedule)
            if distributed.any_rank(self.stop_requested, self.d, self.device):
                raise Preempted()  # the epoch's checkpoint is already written
            if self.stopper.should_stop(st):
                event("early stop", phase=phase, best=st.best, best_at=str(st.best_where))
                break
        self.cache = None
        self.restore_best()
        st.phase, st.epoch, st.batch, st.patience, st.running = phase + 1, 0, 0, 0, None
        self.save()

    def phase1_cache(self) -> feature_cache.FeatureCache | None:
        reason = feature_cache.unusable_because(self.cfg, self.d.world)
        if reason is not None or self.state.epoch >= self.cfg.phase1.epochs:
            event("phase 1 runs the backbone every epoch (no feature cache)", reason=reason or "phase 1 done")
            return None
        return feature_cache.load_or_build(self.out / "checkpoints" / "phase1_features.pt", self.model, self.splits,
                                           self.cfg, self.device, self.amp, save=self.d.main)

    def lr_factor(self) -> float:
        """Linear scaling (Goyal et al., 2017): the global batch is world x data.batch_size, so is the rate."""
        return float(self.d.world) if self.cfg.lr_scaling == "linear" else 1.0

    def keep_best(self) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.d.main:
            checkpoint.atomic_save(self.model.state_dict(), self.best_path)

    def restore_best(self) -> None:
        if self.best_state is not None:  # every rank holds it: no wait on rank 0's file
            self.model.load_state_dict(self.best_state)
        elif self.best_path.is_file():
            self.model.load_state_dict(checkpoint.load(self.best_path))

    def fit(self) -> None:
        resumed = self.try_resume()
        self.install_sigterm()
        for phase in (1, 2):
            if self.state.phase == phase:
                self.run_phase(phase, resumed)
                resumed = None
