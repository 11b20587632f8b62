"""Quick check of a published artifact: top-k for a few image files, through onnxruntime and the contract's own
preprocessing (the service's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.card import load_card
from contract.precision import choose
from contract.preprocess import preprocess
from contract.publish import resolve_path
from contract.scores import softmax

from .export import ort_session


def predict_files(model: Path, files: list[Path], top_k: int = 3, precision: str = "auto") -> list[dict]:
    """Top-k per file; `precision` as the service reads it (contract.precision; here CPU only)."""
    version = resolve_path(model)
    card = load_card(version)
    chosen = choose(version, card, precision, False, ort_session,
                    lambda session, images: session.run(["logits"], {"images": images})[0])
    batch = np.stack([preprocess(Path(f).read_bytes(), card.spec, max_pixels=1 << 40) for f in files])
    probs = softmax(chosen.session.run(["logits"], {"images": batch})[0], card.temperature)
    k = min(top_k, len(card.classes))
    out = []
    for f, p in zip(files, probs):
        top = np.argsort(-p)[:k]
        out.append({"file": str(f), "precision": chosen.precision, "precision_note": chosen.note,
                    "top_k": [{"label": card.classes[i], "probability": float(p[i])} for i in top]})
    return out
