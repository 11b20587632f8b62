"""The int8 canary: a few validation images as the model's uint8 input, with the probabilities the fp32 and the int8
model gave them where the artifact was built. Where a model is served, its int8 session runs them again: a CPU whose
int8 kernels saturate (AVX2 without VNNI, for files quantized without reduce_range), another execution provider or a
damaged file gives other answers, and the service then serves fp32 (contract.precision, serving.core)."""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from .files import sha256_of
from .scores import softmax

CANARY_FILE = "canary.npz"
MAX_PROB_DELTA = 0.05  # int8 probabilities here against those where it was built: kernels round differently


class Canary(BaseModel):
    """The int8 variant's `canary` block in model.json: the file, and what the node must reproduce."""
    model_config = ConfigDict(extra="allow")
    file: str
    sha256: str
    n: int
    top1_agreement: float  # int8 against fp32 where it was built
    max_prob_delta: float


@dataclass(frozen=True)
class CanaryResult:
    passed: bool
    detail: str


def write_canary(path: Path, images: np.ndarray, probs32: np.ndarray, probs8: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.astype(np.uint8), fp32=probs32.astype(np.float32),
                        int8=probs8.astype(np.float32))
    Path(path).write_bytes(buf.getvalue())


def check(run_logits: Callable[[np.ndarray], np.ndarray], version_dir: Path, canary: Canary,
          temperature: float) -> CanaryResult:
    """Run the canary through `run_logits` (the int8 session here): its top-1 must agree with fp32 at least as often
    as it did where it was built, and its probabilities stay within MAX_PROB_DELTA of the int8 ones measured there."""
    path = Path(version_dir) / canary.file
    if not path.is_file() or sha256_of(path) != canary.sha256:
        return CanaryResult(False, f"{path} is missing or its sha256 differs from model.json")
    with np.load(path) as data:
        images, probs32, built = data["images"], data["fp32"], data["int8"]
    here = softmax(run_logits(images), temperature)
    agree = float((here.argmax(1) == probs32.argmax(1)).mean())
    delta = float(np.abs(here - built).max())
    facts = (f"top-1 agreement with fp32 {agree:.3f} (at export {canary.top1_agreement:.3f}), max |dp| against "
             f"the int8 answers at export {delta:.4f} (limit {canary.max_prob_delta}) on {len(images)} images")
    passed = agree >= canary.top1_agreement and delta <= canary.max_prob_delta
    return CanaryResult(passed, facts)
