"""Which of an artifact's files to run: one setting, `precision: auto | fp32 | int8 | fp16`, for the service,
`python -m training predict`, the skew gate's scorer and the benchmarks.

auto: fp16 on CUDA where the artifact has it; on CPU the int8 variant where the artifact has it and it passes the
canary check on this node (contract.canary); fp32 otherwise. An int8 variant that fails the check (asked for by name
or by auto) is not served: fp32 is, and the note says why. The session is opened by the caller (onnxruntime lives
outside the contract), through `open_session(path) -> session` and `logits_of(session, images) -> logits`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import canary
from .card import ArtifactError, ModelCard, model_file

Precision = Literal["auto", "fp32", "int8", "fp16"]


@dataclass
class Chosen:
    precision: str  # what is served: fp32 | int8 | fp16
    path: Path
    session: Any
    note: str  # why, in one line (the log, /model_info)
    canary_passed: bool | None = None  # the int8 canary on this node; None where it did not run


def choose(version_dir: Path, card: ModelCard, wanted: Precision, on_cuda: bool,
           open_session: Callable[[Path], Any], logits_of: Callable[[Any, np.ndarray], np.ndarray],
           verify: bool = True) -> Chosen:
    if wanted == "fp16" or (wanted == "auto" and on_cuda and "fp16" in card.variants):
        path = model_file(version_dir, card, "fp16", verify)
        return Chosen("fp16", path, open_session(path), "fp16 variant" + (" (auto, on CUDA)" if wanted == "auto"
                                                                             else ""))
    if wanted == "fp32" or (wanted == "auto" and (on_cuda or "int8" not in card.variants)):
        why = {"fp32": "asked for", "auto": "on CUDA without an fp16 variant" if on_cuda else
               "no int8 variant: " + card.variants_refused.get("int8", "export.int8 was off")}[wanted]
        path = model_file(version_dir, card, "fp32", verify)
        return Chosen("fp32", path, open_session(path), f"fp32 ({why})")
    path = model_file(version_dir, card, "int8", verify)  # ArtifactError where int8 was asked for and is absent
    session = open_session(path)
    result = canary.check(lambda images: logits_of(session, images), version_dir, card.variants["int8"].canary,
                          card.temperature)
    if result.passed:
        return Chosen("int8", path, session, f"int8 variant, canary passed on this node: {result.detail}", True)
    path = model_file(version_dir, card, "fp32", verify)
    return Chosen("fp32", path, open_session(path), f"fp32: the int8 variant failed the canary check on this node "
                                                    f"({result.detail}); int8 is not served here", False)


__all__ = ["ArtifactError", "Chosen", "Precision", "choose"]
