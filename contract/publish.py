"""Versions and LATEST: how a version is installed, which one is published, and how a reader finds it.

1. the training job writes everything into a staging directory beside the target (same filesystem),
2. install(): the staging directory is renamed to <version> (atomic on POSIX),
3. promote(): LATEST is replaced atomically (contract.files.write_atomic); a reader never sees it half-written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .card import ArtifactError, load_card
from .files import fsync_tree, write_atomic


def install(staging: Path, root: Path, version: str) -> Path:
    fsync_tree(staging)
    target = root / version
    os.rename(staging, target)
    return target


def published_version(root: Path) -> str | None:
    latest = Path(root) / "LATEST"
    return latest.read_text().strip() if latest.is_file() else None


def promote(root: Path, version: str) -> str | None:
    """LATEST -> version; returns the version it replaced."""
    previous = published_version(root)
    write_atomic(Path(root) / "LATEST", version + "\n")
    return previous


def resolve(model_dir: Path | None, artifacts_root: Path | None, model_name: str | None) -> Path:
    """An explicit version directory, or artifacts_root/model_name/<contents of LATEST>."""
    if model_dir is not None:
        return Path(model_dir)
    if artifacts_root is None or not model_name:
        raise ArtifactError("set model_dir, or artifacts_root and model_name")
    root = Path(artifacts_root) / model_name
    version = published_version(root)
    if version is None:
        raise ArtifactError(f"no published model: {root / 'LATEST'} does not exist (run the training job first)")
    return root / version


def resolve_path(path: Path) -> Path:
    """A version directory (holds model.onnx) as is, or a model directory (artifacts/<name>) through its LATEST."""
    path = Path(path)
    return path if (path / "model.onnx").is_file() else resolve(None, path.parent, path.name)


def fetch(url: str, cache_dir: Path) -> Path:
    """A version in an object store (s3://bucket/artifacts/<name>, through its LATEST, or .../<name>/<version>)
    as a local version directory under cache_dir/<name>/<version>: downloaded once (a version never changes once
    written), whole (into a staging directory, checked against model.json's sha256, then renamed into place)."""
    from .storage import place, translated

    store = place(url)
    if not store.exists("model.json"):  # a model folder: its LATEST names the version
        if not store.exists("LATEST"):
            raise ArtifactError(f"{url}: neither a version (no model.json) nor a model folder (no LATEST)")
        store = place(f"{url.rstrip('/')}/{store.read_text('LATEST').strip()}")
    name, version = store.root.rstrip("/").split("/")[-2:]
    target = Path(cache_dir) / name / version
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        with translated(url):
            store.fs.get(store.root.rstrip("/") + "/", str(staging) + "/", recursive=True)
        load_card(staging)  # every file there and as model.json's sha256 says, or ArtifactError
        install(staging, target.parent, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
