"""Two-phase fine-tuning: phase 1 trains the head on a frozen backbone, phase 2 unfreezes the top stages.

Every random choice is a function of (seed, phase, epoch, batch), and the full state is checkpointed each epoch and
on SIGTERM, so a pod killed and restarted finishes with the same weights as one that never stopped.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint, distributed, feature_cache, metrics
from .batch_augment import BatchAugment
from .config import TrainConfig
from .data import Splits
from .loader import EpochSampler, eval_loader, train_loader
from .log import event, progress
from .model import Classifier, set_trainable, train_mode
from .optim import Schedule, class_weights, make_optimizer, trainable_stages
from .transforms import batch_mixer, eval_transform, train_transform

EXIT_PREEMPTED = 75  # "temporary failure": the Job's podFailurePolicy treats it as a restart, not a failure


class Preempted(SystemExit):
    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return None  # CPU runs in fp32: deterministic, and bf16 buys little on these cores
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def step_seed(seed: int, phase: int, epoch: int, batch: int) -> int:
    return ((seed * 7 + phase) * 100_003 + epoch) * 1_000_003 + batch


class Trainer:
    def __init__(self, cfg: TrainConfig, splits: Splits, model: Classifier, device: torch.device,
                 d: distributed.Dist = distributed.Dist()):
        self.cfg, self.splits, self.model, self.device, self.d = cfg, splits, model, device, d
        self.rank, self.world = d.rank, d.world
        self.net, self.net_stages = model, None  # the DDP wrapper when distributed, rebuilt as stages unfreeze
        self.best_state = None
        self.out = Path(cfg.output_dir)
        self.amp = amp_dtype(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        counts = splits.train.counts()
        weights = class_weights(counts)
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
        self.eval_tf = eval_transform(cfg.data.resize_size, cfg.data.image_size, cfg.data.interpolation)
        self.val_loader = eval_loader(splits.val, self.eval_tf, cfg.data.eval_batch_size, cfg.data.num_workers, pin)
        self.mixer = batch_mixer(cfg.augment, len(splits.classes))
        self.batch_augment, self.train_array = None, None
        if cfg.data.augment_on == "device":
            if splits.train.array is None:
                raise ValueError("data.augment_on=device needs a dataset held in memory (CIFAR layout); folders of "
                                 "image files go through data.augment_on=loader")
            self.batch_augment = BatchAugment(cfg.data.image_size, cfg.augment)
            self.train_array = torch.from_numpy(splits.train.array).to(device)  # uint8: CIFAR-10 is 150 MB
        self.stop_requested = False
        self.cache: feature_cache.FeatureCache | None = None
        self.cache_seconds: float | None = None  # what building the phase-1 cache cost (it is freed after phase 1)
        self.state = {"phase": 1, "epoch": 0, "batch": 0, "best": None, "best_where": None, "patience": 0,
                      "history": [], "running": None}

    # ---- checkpoints -------------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def save(self, optimizer=None, schedule=None) -> None:
        if self.rank != 0:
            return
        checkpoint.atomic_save({
            "state": self.state, "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "schedule": schedule.state_dict() if schedule else None, "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(), "config": self.cfg.model_dump(mode="json"),
        }, self.last_path, keep_previous=True)

    def try_resume(self) -> dict | None:
        stale = checkpoint.remove_stale_temporaries(self.last_path.parent) if self.rank == 0 else []
        if stale:
            event("removed temporary files of an interrupted checkpoint write", files=stale)
        ckpt, path, problems = checkpoint.load_latest(self.last_path)
        for problem in problems:
            event(f"warning: {problem}")
        if ckpt is None:
            if problems and self.rank == 0:  # keep the evidence, start over rather than fail on every restart
                for bad in (self.last_path, checkpoint.previous(self.last_path)):
                    if bad.is_file():
                        bad.replace(bad.with_suffix(".corrupt"))
                event("warning: no usable checkpoint, starting from the beginning; unusable files renamed *.corrupt")
            return None
        if ckpt["config"] != self.cfg.model_dump(mode="json"):
            event("warning: resuming with a config that differs from the checkpoint's", path=str(self.last_path))
        self.model.load_state_dict(ckpt["model"])
        self.state = ckpt["state"]
        if self.rank != 0:
            self.state["running"] = None  # partial-epoch sums were saved reduced; rank 0 alone carries them
        self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(ckpt["rng"])
        event("resumed", phase=self.state["phase"], epoch=self.state["epoch"], batch=self.state["batch"],
              checkpoint=path.name)
        return ckpt

    # ---- signals -----------------------------------------------------------------------------------------------
    def install_sigterm(self) -> None:
        def on_term(signum, frame):
            self.stop_requested = True  # finish the current step, checkpoint, exit EXIT_PREEMPTED
        signal.signal(signal.SIGTERM, on_term)

    # ---- one epoch ---------------------------------------------------------------------------------------------
    def train_epoch(self, phase: int, epoch: int, optimizer, schedule) -> dict:
        st = self.state
        running = st["running"] or {"loss": 0.0, "correct": 0, "seen": 0}
        self.sampler.set_epoch(epoch + 1000 * phase, st["batch"])
        train_mode(self.model)
        total = self.sampler.batches_per_epoch()
        cached = phase == 1 and self.cache is not None
        batches = (self.cached_batches(epoch) if cached else
                   self.array_batches() if self.batch_augment is not None else self.train_loader)
        net = self.model.head if cached else self.net
        bar = progress(batches, total - st["batch"], f"phase {phase} epoch {epoch + 1}")
        for inputs, labels in bar:
            torch.manual_seed(step_seed(self.cfg.seed, phase, epoch, st["batch"]) + 7919 * self.rank)
            y = labels.to(self.device, non_blocking=True)
            x, target = (inputs.to(self.device), y) if cached else self.image_input(inputs, y)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = net(x)
                loss = self.criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            schedule.after_step()
            running["loss"] += loss.item() * len(y)
            running["correct"] += int((logits.argmax(1) == y).sum())
            running["seen"] += len(y)
            st["batch"] += 1
            bar.set_postfix(loss=f"{running['loss'] / running['seen']:.3f}",
                            acc=f"{running['correct'] / running['seen']:.3f}")
            if distributed.any_rank(self.stop_requested, self.d, self.device):
                totals = distributed.sum_all([running["loss"], running["correct"], running["seen"]], self.d,
                                             self.device)
                st["running"] = dict(zip(("loss", "correct", "seen"), totals))
                self.save(optimizer, schedule)
                event("SIGTERM: checkpoint written, exiting", phase=phase, epoch=epoch, batch=st["batch"])
                raise Preempted()
        st["batch"], st["running"] = 0, None
        loss, correct, seen = distributed.sum_all([running["loss"], running["correct"], running["seen"]], self.d,
                                                  self.device)
        return {"train_loss": loss / seen, "train_acc": correct / seen}

    def image_input(self, images: torch.Tensor, y: torch.Tensor):
        if self.batch_augment is not None:
            x = self.batch_augment(images)  # uint8 NHWC already on the device -> augmented float NCHW
        else:
            x = images.to(self.device, non_blocking=True).float().div_(255)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.mixer(x, y) if self.mixer is not None else (x, y)

    def array_batches(self):
        """uint8 NHWC batches indexed straight from the in-memory array on the device, in the sampler's order."""
        order = torch.tensor([i for i, _ in self.sampler], dtype=torch.long)
        labels = torch.tensor(self.splits.train.labels)
        for idx in order.split(self.cfg.data.batch_size):
            yield self.train_array[idx.to(self.device)], labels[idx]

    def cached_batches(self, epoch: int):
        """Rows of the feature cache in the sampler's order: the same batches the image loader would give."""
        feats = self.cache.train[epoch % len(self.cache.train)]
        order = torch.tensor([i for i, _ in self.sampler], dtype=torch.long)
        for idx in order.split(self.cfg.data.batch_size):
            yield feats[idx], self.cache.train_labels[idx]

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

    def improved(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value < best if self.cfg.early_stop.metric == "val_loss" else value > best

    # ---- phases ------------------------------------------------------------------------------------------------
    def run_phase(self, phase: int, resumed: dict | None) -> None:
        pcfg = self.cfg.phase1 if phase == 1 else self.cfg.phase2
        st = self.state
        set_trainable(self.model, trainable_stages(self.cfg, phase, st["epoch"]),
                      "frozen" if phase == 1 else self.cfg.phase2.batchnorm)
        if phase == 1:
            self.cache = self.phase1_cache()
            self.cache_seconds = self.cache.seconds if self.cache is not None else None
        optimizer = make_optimizer(self.model, self.cfg, phase, self.lr_factor())
        mode = "min" if self.cfg.early_stop.metric == "val_loss" else "max"
        schedule = Schedule(optimizer, pcfg.schedule, pcfg.warmup_epochs, pcfg.epochs,
                            self.sampler.batches_per_epoch(), mode)
        if resumed and resumed["optimizer"] is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            schedule.load_state_dict(resumed["schedule"])
        for epoch in range(st["epoch"], pcfg.epochs):
            stages = trainable_stages(self.cfg, phase, epoch)
            set_trainable(self.model, stages, "frozen" if phase == 1 else self.cfg.phase2.batchnorm)
            if self.net_stages != (phase, tuple(stages)):
                self.net = distributed.wrap(self.model, self.d, self.device)
                if self.cfg.compile:  # recompiled when the trainable set changes, like the DDP wrapper
                    self.net = torch.compile(self.net)
                self.net_stages = (phase, tuple(stages))
            t0 = time.perf_counter()
            row = {"phase": phase, "epoch": epoch + 1, "trainable": stages or ["head"]}
            row.update(self.train_epoch(phase, epoch, optimizer, schedule))
            row.update(self.validate(phase))
            row["lr"] = max(g["lr"] for g in optimizer.param_groups)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            value = row[self.cfg.early_stop.metric]
            schedule.after_epoch(value)
            if self.improved(value):
                st["best"], st["best_where"], st["patience"] = value, (phase, epoch + 1), 0
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                if self.rank == 0:
                    checkpoint.atomic_save(self.model.state_dict(), self.best_path)
            else:
                st["patience"] += 1
            st["history"].append(row)
            st["epoch"] = epoch + 1
            event("epoch", **{k: v for k, v in row.items() if k != "trainable"})
            stop = st["patience"] >= self.cfg.early_stop.patience
            self.save(optimizer, schedule)
            if distributed.any_rank(self.stop_requested, self.d, self.device):
                raise Preempted()  # the epoch's checkpoint is already written
            if stop:
                event("early stop", phase=phase, best=st["best"], best_at=str(st["best_where"]))
                break
        self.cache = None
        self.restore_best()
        st.update(phase=phase + 1, epoch=0, batch=0, patience=0, running=None)
        self.save()

    def phase1_cache(self) -> feature_cache.FeatureCache | None:
        reason = feature_cache.unusable_because(self.cfg, self.world)
        if reason is not None or self.state["epoch"] >= self.cfg.phase1.epochs:
            event("phase 1 runs the backbone every epoch (no feature cache)", reason=reason or "phase 1 done")
            return None
        return feature_cache.load_or_build(self.out / "checkpoints" / "phase1_features.pt", self.model, self.splits,
                                           self.cfg, self.device, self.amp, save=self.rank == 0)

    def lr_factor(self) -> float:
        """Linear scaling (Goyal et al., 2017): the global batch is world x data.batch_size, so is the rate."""
        return float(self.world) if self.cfg.lr_scaling == "linear" else 1.0

    def restore_best(self) -> None:
        if self.best_state is not None:  # every rank holds it: no wait on rank 0's file
            self.model.load_state_dict(self.best_state)
        elif self.best_path.is_file():
            self.model.load_state_dict(checkpoint.load(self.best_path))

    def fit(self) -> None:
        resumed = self.try_resume()
        self.install_sigterm()
        for phase in (1, 2):
            if self.state["phase"] == phase:
                self.run_phase(phase, resumed)
                resumed = None


def summary_table(history: list[dict]) -> str:
    head = f"{'phase':>5} {'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>8} {'val_acc':>7} {'sec':>6}"
    rows = [f"{r['phase']:>5} {r['epoch']:>5} {r['train_loss']:>10.4f} {r['train_acc']:>9.3f} "
            f"{r['val_loss']:>8.4f} {r['val_acc']:>7.3f} {r['seconds']:>6.2f}" for r in history]
    return "\n".join([head, *rows])


def setup_runtime(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True
    return device


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
