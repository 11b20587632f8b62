"""The evaluation report a person reads before shipping a model: PNG plots and one report.html."""
from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from contract.scores import softmax

from .data import ImageSet
from .seeds import numpy_rng


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val, with the phase boundary marked."""
    if not history:
        return
    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(x, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(x, [r[f"val_{key}"] for r in history], "s-", label="val")
        boundary = next((i for i, r in enumerate(history) if r["phase"] == 2), None)
        if boundary:
            ax.axvline(boundary + 0.5, color="grey", ls="--")
            ax.text(boundary + 0.6, ax.get_ylim()[1], "phase 2", va="top", fontsize=9, color="grey")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch (both phases)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path) -> None:
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = max(4.5, 0.55 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised, counts)")
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grid(images: ImageSet, idx: list[int], probs: np.ndarray, labels: np.ndarray, path: Path,
              title: str) -> None:
    """Thumbnails with predicted and true labels; mistakes framed and titled in red."""
    if not idx:
        return
    cols = min(6, len(idx))
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    classes = images.classes
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        im = images.image(i)
        im.thumbnail((160, 160))
        ax.imshow(im)
        pred = int(probs[i].argmax())
        wrong = pred != labels[i]
        ax.set_title(f"pred {classes[pred]} {probs[i, pred]:.2f}\ntrue {classes[labels[i]]}", fontsize=8,
                     color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_color("red")
                s.set_linewidth(3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# indices into the test set -> (the crops the model saw, uint8 [n,S,S,3]; the top class's Grad-CAM [n,h,w]; its
# occlusion map [n,h,w], signed: contract.occlusion)
Explain = Callable[[list[int]], tuple[np.ndarray, np.ndarray, np.ndarray]]


def plot_heatmaps(images: ImageSet, idx: list[int], probs: np.ndarray, labels: np.ndarray, explain: Explain,
                  path: Path, title: str) -> None:
    """Each photo as the model saw it (the crop) beside the heatmaps of the class it answered over it, Grad-CAM
    (what /explain gives by default) and occlusion (how far the probability falls with each cell hidden, the more
    faithful): where the evidence lies, so that a shortcut (a watermark, a background, a ruler) shows before the
    model ships."""
    if not idx:
        return
    crops, cams, occlusions = explain(idx)
    cols = min(2, len(idx))
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, 3 * cols, figsize=(2.2 * 3 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    classes = images.classes
    for k, (i, crop) in enumerate(zip(idx, crops)):
        photo = axes.flat[3 * k]
        pred = int(probs[i].argmax())
        photo.imshow(crop)
        photo.set_title(f"true {classes[labels[i]]}", fontsize=8)
        for ax, heat, method in ((axes.flat[3 * k + 1], cams[k], "Grad-CAM"),
                                 (axes.flat[3 * k + 2], occlusions[k], "occlusion")):
            overlay(ax, crop, heat)
            ax.set_title(f"why {classes[pred]} {probs[i, pred]:.2f}: {method}", fontsize=7,
                         color="red" if pred != labels[i] else "black")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay(ax, crop: np.ndarray, heat: np.ndarray) -> None:
    """The map over the crop, 0-1 of its peak (an occlusion map's negative cells, where hiding raises the class,
    show as no evidence)."""
    size = crop.shape[0]
    ax.imshow(crop)
    ax.imshow(np.clip(heat / heat.max(), 0, 1) if heat.max() > 0 else np.zeros_like(heat), cmap="jet", alpha=0.5,
              vmin=0, vmax=1, interpolation="bilinear", extent=(-0.5, size - 0.5, size - 0.5, -0.5))


def _table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(out: Path, test_set: ImageSet, logits: np.ndarray, labels: np.ndarray, metrics_: dict,
                 history: list[dict], config: dict, extra: dict | None = None, temperature: float = 1.0,
                 explain: Explain | None = None, findings: list[dict] = ()) -> Path:
    """findings: training.diagnostics' (still improving, overfitting, imbalanced), first on the page; with
    imbalanced classes the per-class table comes before the summary, the rarest recall first."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(list(findings), indent=2))
    classes = test_set.classes
    probs = softmax(logits, temperature)
    (out / "metrics.json").write_text(json.dumps({"test": metrics_, **(extra or {})}, indent=2, default=str))
    plot_curves(history, out / "curves.png")
    plot_confusion(metrics_["confusion_matrix"], classes, out / "confusion_matrix.png")
    rng = numpy_rng(0, "report sample")
    sample = sorted(rng.choice(len(labels), size=min(18, len(labels)), replace=False).tolist())
    plot_grid(test_set, sample, probs, labels, out / "samples.png", "random test images (mistakes in red)")
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1))][:12].tolist()
    plot_grid(test_set, worst, probs, labels, out / "confident_mistakes.png", "most confident mistakes")
    if explain is not None:
        right = [i for i in sample if probs[i].argmax() == labels[i]][:6]
        plot_heatmaps(test_set, worst[:9], probs, labels, explain, out / "mistakes_heatmaps.png",
                      "why it said so: the most confident mistakes")
        plot_heatmaps(test_set, right, probs, labels, explain, out / "right_heatmaps.png",
                      "why it said so: right answers (a sample)")
    per_class = [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in metrics_["per_class"].items()]
    imbalanced = any(f["kind"] == "imbalanced" for f in findings)
    if imbalanced:
        per_class.sort(key=lambda row: row[2])
    summary = [[k, metrics_[k]] for k in ("accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                                          "roc_auc", "ece", "log_loss", "n") if k in metrics_]
    if "with_copies" in metrics_:  # the raw figure beside the honest one (issue 29)
        copies = metrics_["with_copies"]
        summary += [["accuracy incl. test images with a copy in train", copies["accuracy"]],
                    ["n incl. those images", copies["n"]],
                    ["test images with a copy in train", copies["copies_in_train"]]]
    hist = [[r["phase"], r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["seconds"]]
            for r in history]
    imgs = "".join(f'<h2>{t}</h2><img src="{f}" alt="{t}">' for f, t in (
        ("curves.png", "Training curves"), ("confusion_matrix.png", "Confusion matrix"),
        ("samples.png", "Sample predictions"), ("confident_mistakes.png", "Most confident mistakes"),
        ("mistakes_heatmaps.png", "Why it said so: mistakes (Grad-CAM and occlusion maps of the class it answered)"),
        ("right_heatmaps.png", "Why it said so: right answers"),
        ("tune_history.png", "Recipe search (training.tune): validation objective per trial"),
        ("tune_importance.png", "Recipe search: which settings mattered"))
        if (out / f).exists())
    extra_html = "".join(f"<h2>{html.escape(k)}</h2><pre>{html.escape(json.dumps(v, indent=2, default=str))}</pre>"
                         for k, v in (extra or {}).items())
    per_class_html = ("<h2>Per class" + (" (imbalanced classes: lowest recall first)" if imbalanced else "")
                      + f"</h2>{_table(per_class, ['class', 'precision', 'recall', 'F1', 'support'])}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>Evaluation report: {html.escape(config.get('name', ''))}</h1>
<p>classes: {html.escape(', '.join(classes))}; test images: {metrics_['n']}; temperature: {temperature:.3f}</p>
{_findings_html(findings)}{per_class_html if imbalanced else ""}
<h2>Test metrics</h2>{_table(summary, ['metric', 'value'])}
{"" if imbalanced else per_class_html}
<h2>Epochs</h2>{_table(hist, ['phase', 'epoch', 'train loss', 'train acc', 'val loss', 'val acc', 'seconds'])}
{imgs}{extra_html}
<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>"""
    (out / "report.html").write_text(page)
    return out / "report.html"


def _findings_html(findings: list[dict]) -> str:
    if not findings:
        return "<h2>Diagnostics</h2><p>none: validation had stopped improving, train and validation agree, " \
               "classes are balanced.</p>"
    items = "".join(f"<li><b>{html.escape(f['kind'].replace('_', ' '))}</b>: {html.escape(f['message'])}</li>"
                    for f in findings)
    return f"<h2>Diagnostics</h2><ul>{items}</ul>"


def summary_table(history: list[dict]) -> str:
    head = f"{'phase':>5} {'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>8} {'val_acc':>7} {'sec':>6}"
    rows = [f"{r['phase']:>5} {r['epoch']:>5} {r['train_loss']:>10.4f} {r['train_acc']:>9.3f} "
            f"{r['val_loss']:>8.4f} {r['val_acc']:>7.3f} {r['seconds']:>6.2f}" for r in history]
    return "\n".join([head, *rows])
