"""ImageNet weights into TORCH_HOME's cache when the training image is built, so a Job never downloads.

`python -m training.weights_cache` fetches torchvision's ResNet50 file (IMAGENET1K_V2) with its hash checked;
`python -m training.weights_cache FILE` installs a local copy instead (offline builders: the Dockerfile's
RESNET50_WEIGHTS build argument), after checking that it loads into torchvision's ResNet50, every key and shape.
Either way the file lands where `training/backbones.py` looks: $TORCH_HOME/hub/checkpoints/<torchvision's name>.
"""
from __future__ import annotations

import argparse
import pickle
import shutil
import sys
from pathlib import Path

import torch
from torchvision import models

from contract.files import sha256_of

from .backbones import cached_weights_file

WEIGHTS = models.ResNet50_Weights.IMAGENET1K_V2


def published_hash_prefix(weights=WEIGHTS) -> str:
    """torchvision names each file <arch>-<first hex digits of its sha256>.pth."""
    return Path(weights.url).stem.rsplit("-", 1)[1]


def install_local(src: Path, weights=WEIGHTS) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    models.resnet50().load_state_dict(state, strict=True)  # a wrong architecture or a damaged file stops the build
    dest = cached_weights_file(weights)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    digest = sha256_of(dest)
    if not digest.startswith(published_hash_prefix(weights)):
        print(f"note: {src} is not torchvision's published {dest.name} (sha256 {digest[:16]}...); installed as given")
    return dest


def download(weights=WEIGHTS) -> Path:
    weights.get_state_dict(progress=False, check_hash=True)
    return cached_weights_file(weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.weights_cache", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="a local ResNet50 state_dict (default: download)")
    args = parser.parse_args(argv)
    try:
        dest = install_local(args.file) if args.file else download()
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        # unreachable URL, missing or damaged file, wrong keys or shapes
        print(f"error: ResNet50 ImageNet weights not installed: {exc}", file=sys.stderr)
        return 1
    print(f"ResNet50 ImageNet weights in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
