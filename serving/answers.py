"""What a request gets back: the answer models (pydantic: the HTTP layers' schemas) and the pure functions that build
them from the model's outputs and its card. No state and no I/O: `serving.core.Core` calls them."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from contract.card import ModelCard
from contract.errors import RequestError
from contract.scores import ranked

from . import heatmaps as render
from . import metrics


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    confidence: float
    top_k: list[Label]
    model: str
    version: str


class Heatmap(BaseModel):
    label: str
    probability: float
    peak: float = Field(description="the map's largest value: method=cam, the share of the class score (logit) one "
                        "position of the last feature map carries; method=occlusion, the largest fall of the class's "
                        "probability when one cell is hidden")
    grid: list[list[float]] | None = Field(None, description="rows of the map at the last feature map's "
                                           "resolution, 0-1 of its peak (format=grid); method=occlusion: negative "
                                           "where hiding the cell raises the class's probability")
    png: str | None = Field(None, description="base64 PNG: the map over the cropped input the model saw "
                            "(format=png)")


HeatmapFormat = Literal["grid", "png"]
# cam: Grad-CAM from the graph, free with the answer; occlusion: the fall of the probability with each cell of the same
# grid hidden, one model run per cell (contract.occlusion says when it is the more faithful)
HeatmapMethod = Literal["cam", "occlusion"]


class Explanation(Prediction):
    method: HeatmapMethod = Field(description="how the heatmaps were made")
    heatmaps: list[Heatmap] = Field(description="one per class in top_k, then the class asked for by `label`")


class Served(BaseModel):
    """Which file serves and why: /model_info, the V2 readiness answer."""
    precision: str | None
    provider: str | None
    note: str


def answer(card: ModelCard, probs: np.ndarray, top_k: int) -> Prediction:
    """One image's answer: the top class and the top_k classes with their probabilities, and the version."""
    classes = card.classes
    order = ranked(probs, min(top_k, len(classes)))
    return Prediction(label=classes[order[0]], confidence=float(probs[order[0]]), model=card.name,
                      version=card.version,
                      top_k=[Label(label=classes[i], probability=float(probs[i])) for i in order])


def unknown_class(named: list[str], classes: list[str]) -> RequestError:
    """`named`: what the client sent, as `field='value'`; the one message of /explain's label and /feedback."""
    return RequestError("unknown_class", f"unknown class {', '.join(named)}; the model's classes are {classes}", 422)


def heatmap_classes(classes: list[str], top_k: int, label: str | None) -> np.ndarray:
    """The graph's encoding of what to map: -1..-k for the top k classes, then `label`'s index."""
    asked = [-rank for rank in range(1, min(top_k, len(classes)) + 1)]
    if label is not None:
        if label not in classes:
            raise unknown_class([f"label='{label}'"], classes)
        asked.append(classes.index(label))
    return np.array(asked, np.int64)


def explanations(card: ModelCard, probs: np.ndarray, maps: np.ndarray, mapped: np.ndarray, asked: int, top_k: int,
                 pixels: np.ndarray | None, method: HeatmapMethod = "cam") -> list[Explanation]:
    """Answers with their heatmaps, each class once (`label` may be one of the top k); PNGs where pixels."""
    out = []
    for i, row in enumerate(probs):
        found, seen = [], set()
        for j in range(asked):
            c = int(mapped[i, j])
            if c in seen:
                continue
            seen.add(c)
            heatmap = maps[i, j]
            found.append(Heatmap(label=card.classes[c], probability=float(row[c]), peak=float(heatmap.max()),
                                 grid=render.grid(heatmap) if pixels is None else None,
                                 png=render.overlay_base64(pixels[i], heatmap) if pixels is not None else None))
        metrics.heatmaps.labels(format="grid" if pixels is None else "png", method=method).inc(len(found))
        out.append(Explanation(**answer(card, row, top_k).model_dump(), method=method, heatmaps=found))
    return out


def feedback(card: ModelCard, predicted: str, actual: str) -> dict:
    """A client's ground truth for an earlier prediction, counted (online accuracy); both classes must be the
    model's."""
    unknown = [f"{k}='{v}'" for k, v in (("predicted", predicted), ("actual", actual)) if v not in card.classes]
    if unknown:
        raise unknown_class(unknown, card.classes)
    outcome = "correct" if predicted == actual else "incorrect"
    metrics.feedback.labels(outcome=outcome, actual=actual).inc()
    return {"outcome": outcome}
