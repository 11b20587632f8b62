"""Logits -> probabilities, with the softmax temperature model.json carries (fitted on the validation split)."""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)  # exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ranked(probs: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k most probable classes of one row, best first; ties keep class order (stable), so every
    reader of the contract (the service, the batch job) ranks alike."""
    return np.argsort(-probs, kind="stable")[:k]
