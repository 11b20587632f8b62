"""One derivation for every seed the trainer uses: a 63-bit hash of (seed, purpose, indices).

Hashing, rather than arithmetic such as seed * K + epoch, keeps the streams of different purposes and positions
apart (no two (seed, epoch) pairs can land on the same number) and names what each seed is for. Every generator the
trainer seeds is seeded here.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive(seed: int, purpose: str, *indices: int) -> int:
    digest = hashlib.blake2b(repr((seed, purpose, *indices)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch.manual_seed takes < 2**63


def seed_all(seed: int) -> None:
    """The global generators (torch, Python's random, numpy's legacy one) from one seed: at the start of a run, in a
    loader worker before each seeded image, before each training step."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def torch_generator(seed: int, purpose: str, *indices: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive(seed, purpose, *indices))


def numpy_rng(seed: int, purpose: str, *indices: int) -> np.random.Generator:
    return np.random.default_rng(derive(seed, purpose, *indices))
