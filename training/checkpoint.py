"""Checkpoints that survive a pod being killed at any instant, a full disk and a torn copy.

- Written to a temporary file, fsynced, renamed: a reader sees the previous complete file or the new one.
- The file starts with a header line holding the sha256 of the payload, so a truncated or altered file (a torn copy
  between volumes, a disk error) is detected on load and never used.
- The previous `last.pt` is kept as `last.prev.pt`: when the newest one fails its checksum the run resumes from the
  one before, instead of starting over.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

MAGIC = b"IMGCLS-CKPT1 sha256="


class CheckpointError(RuntimeError):
    pass


def previous(path: Path) -> Path:
    return Path(path).with_suffix(".prev" + Path(path).suffix)


def _encode(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


def atomic_save(obj, path: Path, keep_previous: bool = False) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _encode(obj)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc} (is the output volume full or "
                           f"read-only? the previous checkpoint is untouched)")


def check_writable(folder: Path) -> None:
    """Fail in the first second, not after the first epoch, when the output volume is read-only or full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe.", suffix=".tmp") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise CheckpointError(f"output_dir {folder} is not writable: {exc.strerror or exc} (mount a writable volume "
                              f"with free space, or set output_dir)") from None


def load(path: Path):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc.strerror or exc}") from None
    head, _, payload = data.partition(b"\n")
    if not head.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} has no checksum header (not written by this trainer, or cut "
                              f"short); delete it to start over")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check ({len(data)} bytes: truncated or "
                              f"corrupted); it was not used")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest(path: Path) -> tuple[dict | None, Path | None, list[str]]:
    """The newest checkpoint that passes its checksum among path and its previous copy; with the problems met."""
    problems = []
    for candidate in (Path(path), previous(path)):
        if not candidate.is_file():
            continue
        try:
            return load(candidate), candidate, problems
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, None, problems


def quarantine(path: Path) -> list[str]:
    """No usable checkpoint: rename path and its previous copy *.corrupt (kept as evidence, never loaded again), so
    the run starts over instead of failing on every restart."""
    moved = []
    for bad in (Path(path), previous(path)):
        if bad.is_file():
            bad.replace(bad.with_suffix(".corrupt"))
            moved.append(bad.name)
    return moved


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Temporary files left by a process killed mid-write: never loaded, deleted at the next start."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return [p.name for p in stale]


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
