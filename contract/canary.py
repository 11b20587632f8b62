"""The int8 canary: a few validation images as the model's uint8 input, with the probabilities the fp32 and the int8
model gave them where the artifact was built. Where a model is served, its int8 session runs them again: a CPU whose
int8 kernels saturate (AVX2 without VNNI, for files quantized without reduce_range), another execution provider or a
damaged file gives other answers, and the service then serves another file (contract.precision, serving.core).

Sixteen images catch a broken file, but not surely a file that is wrong on a few percent of images (8-bit weights
on an AVX2-only CPU disagreed with fp32 on 2.6 % of the demo photos: all 16 agree two times in three, and only the
probability bound may still catch it). That case is known from the CPU alone, so `saturation_risk` rules it out
before the canary runs."""
from __future__ import annotations

import io
import platform
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


INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags: int8 products summed in 32 bits


def cpu_flags() -> set[str] | None:
    """This CPU's flags from /proc/cpuinfo; None where there is no such file (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def saturation_risk() -> str | None:
    """Why 8-bit int8 weights would be answered wrong on this CPU, or None. An x86 CPU without VNNI or AMX sums pairs
    of uint8 x int8 products in 16 bits (AVX2's vpmaddubsw) and saturates on weights wider than 7 bits, which is why
    onnxruntime has `reduce_range`. Other machines (ARM's dot products sum in 32 bits), or no flags to read: None,
    and the canary decides alone."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_flags()
    if flags is None or flags & set(INT8_DOT_PRODUCT):
        return None
    return ("this CPU has no VNNI or AMX (none of " + ", ".join(INT8_DOT_PRODUCT) + " in /proc/cpuinfo): its int8 "
            "sums saturate on 8-bit weights")


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
