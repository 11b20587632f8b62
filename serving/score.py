"""Score an artifact on labelled image files through the service's own code path (decode, resize, crop, onnxruntime).

The training job's skew gate runs this as a subprocess (training and serving never import each other):
    python -m serving.score --model DIR --labels list.jsonl [--precision fp32|int8|fp16|auto]
    (lines of list.jsonl: {"path": "...", "label": <class index>})
prints {"accuracy", "n", "predictions"} as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from contract.card import load_card
from contract.precision import PRECISIONS, choose
from contract.preprocess import preprocess

from .runtime import OnnxClassifier


def score(model_dir: Path, items: list[tuple[str, int]], batch_size: int = 16, precision: str = "fp32") -> dict:
    card = load_card(model_dir)
    chosen = choose(Path(model_dir), card, precision, False,
                    lambda path: OnnxClassifier(path, len(card.classes), card.image_size, device="cpu"),
                    lambda clf, images: clf.run(images))
    clf = chosen.session
    preds = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        batch = np.stack([preprocess(Path(p).read_bytes(), card.spec, max_pixels=1 << 40) for p, _ in chunk])
        preds += clf.run(batch).argmax(1).tolist()
    labels = [y for _, y in items]
    correct = sum(int(p == y) for p, y in zip(preds, labels))
    return {"accuracy": correct / max(1, len(items)), "n": len(items), "predictions": preds,
            "precision": chosen.precision, "note": chosen.note}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.score", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    args = ap.parse_args(argv)
    items = []
    for line in args.labels.read_text().splitlines():
        row = json.loads(line)
        items.append((row["path"], int(row["label"])))
    json.dump(score(args.model, items, precision=args.precision), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
