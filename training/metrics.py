"""Classification metrics from logits, with scikit-learn doing the counting."""
from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm

from contract.scores import softmax

from .runtime import autocast, model_input


@torch.no_grad()
def predict(model, loader, device, channels_last: bool = False, amp_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] (float32) and labels [N] over a loader of uint8 images."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with autocast(device, amp_dtype):
            logits = model(model_input(images, device, channels_last))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def quick(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The per-epoch validation numbers: loss, accuracy, macro F1."""
    probs = softmax(logits)
    pred = probs.argmax(1)
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return {"loss": loss, "acc": float((pred == labels).mean()),
            "macro_f1": float(skm.f1_score(labels, pred, average="macro", zero_division=0))}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return float(ece)


def full(logits: np.ndarray, labels: np.ndarray, classes: list[str], temperature: float = 1.0) -> dict:
    """Everything the report shows: accuracy, top-5, per-class and macro P/R/F1, ROC-AUC, confusion, ECE."""
    probs = softmax(logits, temperature)
    pred = probs.argmax(1)
    c = len(classes)
    p, r, f, support = skm.precision_recall_fscore_support(labels, pred, labels=range(c), zero_division=0)
    out = {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "macro_precision": float(p.mean()), "macro_recall": float(r.mean()), "macro_f1": float(f.mean()),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=range(c)).tolist(),
        "ece": expected_calibration_error(probs, labels),
        "log_loss": float(skm.log_loss(labels, probs, labels=range(c))),
    }
    if c > 5:  # with 5 classes or fewer every label is in the top 5: the figure would always be 1
        out["top5_accuracy"] = float(skm.top_k_accuracy_score(labels, probs, k=5, labels=range(c)))
    present = np.unique(labels)
    if len(present) == c:  # AUC is undefined for a class with no positives
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs[:, 1]) if c == 2 else
                               skm.roc_auc_score(labels, probs, multi_class="ovr", labels=range(c)))
    return out
