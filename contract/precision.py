"""Which of an artifact's files to run: one setting, `precision: auto | fp32 | int8 | int8_7bit | fp16`, for the
service, `python -m training predict`, the skew gate's scorer and the benchmarks.

An artifact may carry two int8 files (training.quantize): `int8` with 8-bit weights, right on CPUs whose int8 dot
product sums in 32 bits (VNNI, AMX), and `int8_7bit` with 7-bit weights, right on any x86 CPU (AVX2 alone sums pairs
of products in 16 bits, and 8-bit weights saturate there). `int8` asks for the first of them that passes the canary
check on this node (contract.canary), in that order; `int8_7bit` for that file only.

auto: fp16 on CUDA where the artifact has it; on CPU the int8 files as for `int8`; fp32 otherwise. An int8 file that
fails the check (asked for by name or by auto) is not served: the next is tried, then fp32, and the note says why.
The session is opened by the caller (onnxruntime lives outside the contract), through `open_session(path) ->
session` and `logits_of(session, images) -> logits`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from . import canary
from .card import ArtifactError, ModelCard, model_file

Precision = Literal["auto", "fp32", "int8", "int8_7bit", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)  # the command lines' choices
INT8_VARIANTS = ("int8", "int8_7bit")  # the order `int8` tries them in: the more accurate first


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
    shipped = [k for k in INT8_VARIANTS if k in card.variants]
    if wanted == "fp32" or (wanted == "auto" and (on_cuda or not shipped)):
        why = {"fp32": "asked for", "auto": "on CUDA without an fp16 variant" if on_cuda else
               "no int8 variant: " + refused_int8(card)}[wanted]
        return fp32(version_dir, card, verify, open_session, f"fp32 ({why})")
    tries = [wanted] if wanted == "int8_7bit" else shipped
    if not tries:
        model_file(version_dir, card, "int8", verify)  # ArtifactError: int8 was asked for and none shipped
    failed = []
    for key in tries:
        if key == "int8" and (risk := canary.saturation_risk()):
            failed.append(f"int8 (8-bit weights) is not tried: {risk}")
            continue
        path = model_file(version_dir, card, key, verify)  # ArtifactError where int8_7bit was asked for and is absent
        session = open_session(path)
        variant = card.variants[key]
        result = canary.check(lambda images: logits_of(session, images), version_dir, variant.canary,
                              card.temperature)
        weights = variant.calibration.weights if variant.calibration else "int8"
        if result.passed:
            return Chosen(key, path, session, f"{key} variant ({weights} weights), canary passed on this node: "
                                              f"{result.detail}" + "".join(f"; {f}" for f in failed), True)
        failed.append(f"{key} failed the canary check on this node ({result.detail})")
    return fp32(version_dir, card, verify, open_session, f"fp32: {'; '.join(failed)}; int8 is not served here",
                canary_passed=False)


def fp32(version_dir: Path, card: ModelCard, verify: bool, open_session: Callable[[Path], Any], note: str,
         canary_passed: bool | None = None) -> Chosen:
    path = model_file(version_dir, card, "fp32", verify)
    return Chosen("fp32", path, open_session(path), note, canary_passed)


def refused_int8(card: ModelCard) -> str:
    reasons = [f"{k}: {card.variants_refused[k]}" for k in INT8_VARIANTS if k in card.variants_refused]
    return "; ".join(reasons) if reasons else "export.int8 was off"


__all__ = ["INT8_VARIANTS", "PRECISIONS", "ArtifactError", "Chosen", "Precision", "choose"]
