"""Quick check of a published artifact: top-k for a few image files, through onnxruntime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import load_rgb
from .export import ort_session
from .metrics import softmax
from .transforms import eval_transform


def resolve_artifact(path: Path) -> Path:
    """A version directory, or a model directory holding LATEST."""
    path = Path(path)
    if (path / "LATEST").is_file():
        return path / (path / "LATEST").read_text().strip()
    if not (path / "model.onnx").is_file():
        raise FileNotFoundError(f"{path} holds neither model.onnx nor LATEST")
    return path


def predict_files(model: Path, files: list[Path], top_k: int = 3) -> list[dict]:
    version = resolve_artifact(model)
    card = json.loads((version / "model.json").read_text())
    tf = eval_transform(card["resize_size"], card["image_size"], card["interpolation"])
    batch = np.stack([tf(load_rgb(f)).permute(1, 2, 0).numpy() for f in files])
    probs = softmax(ort_session(version / "model.onnx").run(["logits"], {"images": batch})[0],
                    card.get("temperature", 1.0))
    k = min(top_k, len(card["classes"]))
    out = []
    for f, p in zip(files, probs):
        top = np.argsort(-p)[:k]
        out.append({"file": str(f), "top_k": [{"label": card["classes"][i], "probability": float(p[i])} for i in top]})
    return out
