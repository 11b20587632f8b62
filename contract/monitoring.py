"""Accuracy without labels and the reference for prediction drift: the `monitoring` block of model.json.

ATC, average thresholded confidence (Garg et al., ICLR 2022): on the validation split, with the temperature-scaled
softmax the service uses, choose the threshold t so that the share of images whose score is >= t equals the
validation accuracy; on new traffic, estimated accuracy = the share of predictions whose score is >= t. Two scores:
the maximum probability (ATC-MC) and the negative entropy (ATC-NE). AC, the average top-1 confidence, is the naive
estimate it improves on. Training fits the block (training.job); the service counts against it (serving.metrics).
Torch-free: both halves compute the scores with these functions.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

SCORES = ("mc", "ne")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # the service's histogram


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer trainer's extra fields are kept, not refused


class FittedOn(_Block):
    split: str
    n: int
    accuracy: float
    standard_error: float  # one binomial standard error of `accuracy`: the estimate inherits it


class Histogram(_Block):
    edges: list[float]
    counts: list[int]


class SelfCheck(_Block):
    """The estimates on the test split against its true accuracy."""
    split: str
    n: int
    accuracy: float
    atc_mc: float
    atc_ne: float
    ac: float


class Monitoring(_Block):
    """model.json's `monitoring` block."""
    method: str
    thresholds: dict[str, float]  # score name (SCORES) -> ATC threshold
    fitted_on: FittedOn
    reference_shares: dict[str, float]  # class -> share of the test split's predictions: the drift reference
    confidence_histogram: Histogram
    self_check: SelfCheck


def scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of probabilities: 'mc' the top-1 probability, 'ne' the negative entropy (sum p log p)."""
    p = np.clip(probs, 1e-12, 1.0)
    return {"mc": probs.max(axis=1), "ne": (p * np.log(p)).sum(axis=1)}


def atc_threshold(score: np.ndarray, correct: np.ndarray) -> float:
    """t such that the share of scores >= t equals the accuracy (the paper's definition)."""
    ordered = np.sort(score)
    below = int(round(len(ordered) * (1.0 - float(np.mean(correct)))))
    return float(ordered[min(max(below, 0), len(ordered) - 1)])


def estimates(probs: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    """ATC-MC, ATC-NE and AC on a set of probabilities."""
    s = scores(probs)
    out = {f"atc_{k}": float(np.mean(s[k] >= thresholds[k])) for k in SCORES}
    out["ac"] = float(np.mean(s["mc"]))
    return out


def psi(shares: dict[str, float], reference: dict[str, float], eps: float = 1e-4) -> float:
    """Population stability index of predicted-class shares against the reference (0: identical; > 0.1 shifted,
    > 0.25 strongly shifted, the usual reading)."""
    total = 0.0
    for c, q in reference.items():
        p = shares.get(c, 0.0)
        total += (p - q) * np.log((p + eps) / (q + eps))
    return float(total)


def predicted_shares(probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    counts = np.bincount(probs.argmax(axis=1), minlength=len(classes))
    return {c: float(n / max(1, len(probs))) for c, n in zip(classes, counts)}


def fit(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
        classes: list[str]) -> Monitoring:
    """The monitoring block: thresholds fitted on validation, the test split's predicted-class shares (drift
    reference) and confidence histogram, and a self-check of the estimates against the true test accuracy."""
    v = scores(val_probs)
    correct = val_probs.argmax(axis=1) == val_labels
    thresholds = {k: atc_threshold(v[k], correct) for k in SCORES}
    edges = (0.0, *CONFIDENCE_BUCKETS)
    hist, _ = np.histogram(test_probs.max(axis=1), bins=edges)
    test_acc = float(np.mean(test_probs.argmax(axis=1) == test_labels))
    val_acc = float(np.mean(correct))
    return Monitoring(
        method="ATC (Garg et al., ICLR 2022) on the temperature-scaled softmax", thresholds=thresholds,
        # the estimate inherits validation accuracy's sampling error: on data like validation it is off by about
        # this much (one binomial standard error), whatever the method
        fitted_on=FittedOn(split="val", n=int(len(val_labels)), accuracy=val_acc,
                           standard_error=float(np.sqrt(val_acc * (1 - val_acc) / len(correct)))),
        reference_shares=predicted_shares(test_probs, classes),
        confidence_histogram=Histogram(edges=list(edges), counts=hist.tolist()),
        self_check=SelfCheck(split="test", n=int(len(test_labels)), accuracy=test_acc,
                             **estimates(test_probs, thresholds)))
