"""Where a training epoch's batches come from: the sampler's order over the training split, read as cached backbone
features (phase 1 with the feature cache), as uint8 images already on the device (data.augment_on=device), or
decoded and augmented by the DataLoader; and the last step before the model (device augmentation, mixing)."""
from __future__ import annotations

import torch

from . import distributed
from .batch_augment import BatchAugment
from .config import TrainConfig
from .data import Splits
from .feature_cache import FeatureCache
from .loader import EpochSampler, eval_loader, sampled_rows, train_loader
from .optim import class_weights
from .runtime import model_input
from .transforms import batch_mixer, eval_transform, train_transform


class TrainBatches:
    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device, d: distributed.Dist):
        self.cfg, self.splits, self.device = cfg, splits, device
        self.class_weights = class_weights(splits.train.counts())
        sample_w = self.class_weights[torch.tensor(splits.train.labels)] if cfg.data.balance == "sampler" else None
        self.sampler = EpochSampler(len(splits.train), cfg.seed, cfg.data.batch_size, sample_w, d.rank, d.world)
        if self.sampler.batches_per_epoch() == 0:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the training split "
                             f"({len(splits.train) // d.world} images per process); lower it")
        pin = device.type == "cuda"
        self.train_loader = train_loader(splits.train, train_transform(cfg.data, cfg.augment), self.sampler,
                                         cfg.data.num_workers, pin)
        self.val_loader = eval_loader(splits.val, eval_transform(cfg.data.spec), cfg.data.eval_batch_size,
                                      cfg.data.num_workers, pin)
        self.mixer = batch_mixer(cfg.augment, len(splits.classes))
        self.batch_augment, self.train_array = self._device_augmentation()

    def _device_augmentation(self) -> tuple[BatchAugment | None, torch.Tensor | None]:
        if self.cfg.data.augment_on != "device":
            return None, None
        if self.splits.train.array is None:
            raise ValueError("data.augment_on=device needs a dataset held in memory (CIFAR layout); folders of "
                             "image files go through data.augment_on=loader")
        # uint8 on the device (CIFAR-10 is 150 MB), augmented a whole batch at a time
        return BatchAugment(self.cfg.data.image_size, self.cfg.augment), \
            torch.from_numpy(self.splits.train.array).to(self.device)

    def epoch(self, epoch: int, cache: FeatureCache | None):
        """(inputs, labels) of this epoch from the sampler's current position: cached features where `cache` is
        given (phase 1), else images."""
        if cache is not None:
            feats = cache.train[epoch % len(cache.train)]
            return sampled_rows(feats, cache.train_labels, self.sampler, self.cfg.data.batch_size)
        if self.batch_augment is not None:
            return sampled_rows(self.train_array, torch.tensor(self.splits.train.labels), self.sampler,
                                self.cfg.data.batch_size)
        return self.train_loader

    def image_input(self, images: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of images as the model takes it (float NCHW on the device), and its targets (mixed, with
        mixup/cutmix)."""
        if self.batch_augment is not None:
            x = self.batch_augment(images)  # uint8 NHWC already on the device -> augmented float NCHW
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = model_input(images, self.device, self.cfg.channels_last)
        return self.mixer(x, y) if self.mixer is not None else (x, y)
