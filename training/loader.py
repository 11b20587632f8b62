"""DataLoaders whose every random choice is a function of (seed, epoch, position).

Each sample carries its own RNG seed, so augmentation does not depend on which worker drew it, and a run resumed
mid-epoch sees exactly the batches and augmentations the interrupted run would have seen.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import ImageSet
from .seeds import derive, seed_all, torch_generator


class SeededImages(Dataset):
    def __init__(self, images: ImageSet, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            seed_all(seed)
        takes_bytes = getattr(self.transform, "takes_file_bytes", False)  # evaluation decodes as the service does
        item = self.images.source(index) if takes_bytes else self.images.image(index)
        return self.transform(item), self.images.labels[index]


class EpochSampler(Sampler):
    """A shuffled (or class-weighted) order per epoch, startable at any batch; sharded by rank for DDP."""

    def __init__(self, n: int, seed: int, batch_size: int, weights: torch.Tensor | None = None,
                 rank: int = 0, world: int = 1):
        self.n, self.seed, self.batch_size, self.weights = n, seed, batch_size, weights
        self.rank, self.world = rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> list[int]:
        g = torch_generator(self.seed, "order", self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world  # equal shard sizes keep DDP ranks in step
        return order[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size  # drop_last: no tiny, noisy last batch

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size

    def __iter__(self):
        order = self._order()
        for pos in range(self.start_batch * self.batch_size, self.batches_per_epoch() * self.batch_size):
            yield order[pos], derive(self.seed, "sample", self.epoch, self.rank, pos)


def train_loader(images: ImageSet, transform, sampler: EpochSampler, workers: int, pin: bool) -> DataLoader:
    return DataLoader(SeededImages(images, transform), batch_size=sampler.batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=pin, drop_last=True,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def eval_loader(images: ImageSet, transform, batch_size: int, workers: int, pin: bool) -> DataLoader:
    return DataLoader(SeededImages(images, transform), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=pin)


def sampled_rows(data: torch.Tensor, labels: torch.Tensor, sampler: EpochSampler, batch_size: int):
    """Batches of rows of tensors already in memory (cached features, or uint8 images on the device), in the
    sampler's order: the same batches an image loader over the same sampler would give."""
    order = torch.tensor([i for i, _ in sampler], dtype=torch.long)
    for idx in order.split(batch_size):
        yield data[idx.to(data.device)], labels[idx.to(labels.device)]
