"""The seeds' comparison: pretrained two-phase vs the same architecture from random init vs a small CNN from scratch.

Same data, same splits, same total epoch budget; one table (accuracy, macro F1, epochs, wall time).
`baseline` trains only the small CNN and sets it beside the main run's result when that exists.
"""
from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from .config import TrainConfig
from .job import train_job


def from_scratch(cfg: TrainConfig, backbone: str | None, suffix: str) -> TrainConfig:
    """Every layer trained from random init for the whole budget (a frozen random backbone would be meaningless)."""
    c = cfg.model_copy(deep=True)
    budget = cfg.phase1.epochs + cfg.phase2.epochs
    if backbone:
        c.model.backbone = backbone
    c.model.weights = "none"
    c.phase1.epochs = 0
    c.phase2.epochs = budget
    c.phase2.unfreeze, c.phase2.batchnorm = "all", "train"
    c.phase2.backbone_lr = c.phase2.head_lr = 1e-3
    c.early_stop.patience = max(c.early_stop.patience, budget)  # scratch training is slow to start; give it the budget
    c.name, c.output_dir, c.export.enabled = f"{cfg.name}-{suffix}", Path(f"{cfg.output_dir}-{suffix}"), False
    return c


def _run(label: str, cfg: TrainConfig) -> dict:
    start = time.perf_counter()
    train_job(cfg)
    seconds = time.perf_counter() - start
    m = json.loads((Path(cfg.output_dir) / "final" / "metrics.json").read_text())["test"]
    epochs = len(json.loads((Path(cfg.output_dir) / "final" / "result.json").read_text()).get("history", [])) or None
    return {"variant": label, "backbone": cfg.model.backbone, "weights": cfg.model.weights,
            "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "epochs_budget": cfg.phase1.epochs + cfg.phase2.epochs,
            "epochs_run": epochs, "wall_s": round(seconds, 1), "n_test": m["n"]}


def table(rows: list[dict]) -> str:
    head = ("| variant | backbone | weights | test acc | macro F1 | epochs (budget) | wall s |\n"
            "|---|---|---|---|---|---|---|")
    lines = [f"| {r['variant']} | {r['backbone']} | {r['weights']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
             f"{r['epochs_budget']} | {r['wall_s']} |" for r in rows]
    return "\n".join([head, *lines])


def record(rows: list[dict], cfg: TrainConfig, results_md: Path | None) -> str:
    text = table(rows)
    out = Path(cfg.output_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    if results_md is not None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(results_md, "a") as f:
            f.write(f"\n### compare: {cfg.name}, {cfg.data.path} at {cfg.data.image_size} px ({stamp}, "
                    f"{platform.machine()}, {_cores()} cores, CPU)\n\n{text}\n")
    return text


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0))


def compare(cfg: TrainConfig, results_md: Path | None = None) -> list[dict]:
    rows = [_run("pretrained, two-phase", cfg),
            _run("same architecture, random init", from_scratch(cfg, None, "random-init")),
            _run("small CNN from scratch", from_scratch(cfg, "small_cnn", "small-cnn"))]
    print(record(rows, cfg, results_md))
    return rows


def baseline(cfg: TrainConfig, results_md: Path | None = None) -> list[dict]:
    rows = [_run("small CNN from scratch", from_scratch(cfg, "small_cnn", "small-cnn"))]
    main = Path(cfg.output_dir) / "final" / "metrics.json"
    if main.is_file():
        m = json.loads(main.read_text())["test"]
        rows.insert(0, {"variant": "main run", "backbone": cfg.model.backbone, "weights": cfg.model.weights,
                        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                        "epochs_budget": cfg.phase1.epochs + cfg.phase2.epochs, "wall_s": "see its log",
                        "n_test": m["n"]})
    print(record(rows, cfg, results_md))
    return rows
