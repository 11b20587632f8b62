"""What every peer server runs: the contract's preprocessing (the same pixels as the product) and onnxruntime on
model.onnx, opened the way onnxruntime's documentation shows (default session options, CPU provider).

Imported inside each peer's virtual environment (numpy, Pillow, pydantic, onnxruntime and the peer itself); the
version directory comes from IMGCLS_MODEL_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.card import load_card
from contract.preprocess import preprocess
from contract.scores import softmax

MAX_PIXELS = 25_000_000


class Classifier:
    def __init__(self, version_dir: str | None = None) -> None:
        version = Path(version_dir or os.environ["IMGCLS_MODEL_DIR"])
        card = load_card(version)
        self.classes, self.temperature, self.spec = card.classes, card.temperature, card.spec
        self.session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])

    def pixels(self, blob: bytes) -> np.ndarray:
        return preprocess(blob, self.spec, MAX_PIXELS)

    def answers(self, pixels: np.ndarray) -> list[dict]:
        """uint8 [N,S,S,3] -> one {label, confidence} per image."""
        logits = self.session.run(["logits"], {"images": pixels})[0]
        probs = softmax(logits, self.temperature)
        best = probs.argmax(axis=1)
        return [{"label": self.classes[i], "confidence": float(p[i])} for i, p in zip(best, probs)]

    def classify(self, blobs: list[bytes]) -> list[dict]:
        return self.answers(np.stack([self.pixels(b) for b in blobs]))
