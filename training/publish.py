"""Atomic publishing of an artifact version: a reader polling LATEST never sees a half-written model.

1. everything is written into a staging directory beside the target (same filesystem),
2. the staging directory is renamed to <version> (atomic on POSIX),
3. LATEST is written to a temporary file, fsynced, and os.replace()d (atomic).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def publish(staging: Path, root: Path, version: str) -> Path:
    _fsync_tree(staging)
    target = root / version
    os.rename(staging, target)
    tmp = root / f".LATEST.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "LATEST")
    return target
