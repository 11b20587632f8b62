"""One derivation for every seed the trainer uses: a 63-bit hash of (seed, purpose, indices).

Hashing, rather than arithmetic such as seed * K + epoch, keeps the streams of different purposes and positions
apart (no two (seed, epoch) pairs can land on the same number) and names what each seed is for.
"""
from __future__ import annotations

import hashlib


def derive(seed: int, purpose: str, *indices: int) -> int:
    digest = hashlib.blake2b(repr((seed, purpose, *indices)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch.manual_seed takes < 2**63
