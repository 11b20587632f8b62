"""The recipe search measured (issue 34): the configured recipe, the tuned one, and the configured recipe given the
tuned one's whole wall-clock time, on one dataset, in one run.

python -m bench.tune --config training/configs/hymenoptera.yaml [--budget-minutes 10] [--set KEY=VALUE ...]
    [--results bench/RESULTS.md]

1. configured: `python -m training train` with the config as it is.
2. tuned: `python -m training tune` with tune.budget_minutes (search) and the final full run, whose phase 2 is
   lengthened to fill tune.final_minutes (by default the same minutes); its wall time is the search plus that run.
3. configured, equal training time: the configured recipe with phase 2 lengthened the same way (the epochs that fit
   in tune.final_minutes at the configured run's seconds per phase-2 epoch): the recipes compared at one training
   budget, the search's cost stated beside them.
4. configured, equal wall time: the configured recipe with phase 2 lengthened to spend the tuned run's whole wall
   time, search included.
Rows 3 and 4 stop early on their own validation like any run (the table says how many epochs ran).
Each published model is scored on the run's scored test split through onnxruntime, image by image, so the gain of
the tuned recipe is a paired difference: accuracy difference with a 95 % paired-bootstrap interval, and McNemar's
exact p on the images the two answer differently. Validation values are each run's best, on the objective the search
chose. Runs go to .cache/bench-tune/<config name>/ (int8 and fp16 exports off: they do not change the comparison).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.stats import binomtest

from contract.card import load_card
from contract.publish import resolve_path
from training.config import TrainConfig, load_config
from training.job import prepared_splits
from training.quantize import model_inputs

ROOT = Path(__file__).resolve().parents[1]


SETS: list[str] = []  # --set flags for every run (e.g. model.backbone=efficientnet_lite0 where ResNet50's are absent)


def run(command: str, config: Path, folder: Path, *sets: str) -> float:
    """One training command in its own folder; its wall seconds."""
    args = [sys.executable, "-m", "training", command, "--config", str(config)]
    for s in ("export.int8=false", "export.fp16=false", f"output_dir={folder / 'run'}",
              f"artifacts_dir={folder / 'artifacts'}", *SETS, *sets):
        args += ["--set", s]
    start = time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        done = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}): see {folder.with_suffix('.log')}")
    return time.perf_counter() - start


def correct(version: Path) -> tuple[np.ndarray, str]:
    """Right (1) or wrong (0) per scored test image through the exported graph, and the card's version."""
    card = load_card(version)
    test = prepared_splits(TrainConfig.model_validate(card.config))[0].scored_test()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the optional heatmap input's default is an initializer by design
    session = ort.InferenceSession(str(version / "model.onnx"), options, providers=["CPUExecutionProvider"])
    right = []
    for start in range(0, len(test), 32):
        idx = list(range(start, min(start + 32, len(test))))
        logits = session.run(["logits"], {"images": model_inputs(test, card.spec, idx)})[0]
        right += (logits.argmax(1) == np.asarray(test.labels)[idx]).tolist()
    return np.asarray(right, dtype=np.int64), card.version


def paired(a: np.ndarray, b: np.ndarray, draws: int = 10_000) -> dict:
    """b - a in accuracy: the difference, its 95 % paired-bootstrap interval, McNemar's exact p."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    diffs = (b[idx] - a[idx]).mean(1)
    only_b, only_a = int(((b == 1) & (a == 0)).sum()), int(((a == 1) & (b == 0)).sum())
    p = binomtest(only_b, only_b + only_a, 0.5).pvalue if only_a + only_b else 1.0
    return {"diff": float((b - a).mean()), "low": float(np.quantile(diffs, 0.025)),
            "high": float(np.quantile(diffs, 0.975)), "mcnemar_p": float(p), "only_new_right": only_b,
            "only_old_right": only_a}


def summary(folder: Path, wall: float, objective: str) -> dict:
    result = json.loads((folder / "run" / "final" / "result.json").read_text())
    version = resolve_path(Path(result["artifact"]))
    right, name = correct(version)
    card = load_card(version)
    history = result["history"]
    return {"wall": wall, "val": max(r[objective] for r in history), "right": right, "version": name,
            "macro_f1": card.metrics.test.macro_f1, "epochs": len(history), "tuning": card.tuning,
            "phase2_seconds": [r["seconds"] for r in history if r["phase"] == 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="tune.budget_minutes for the search")
    ap.add_argument("--results", type=Path, help="append the table to this markdown file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    SETS.extend(args.overrides)
    cfg = load_config(args.config, args.overrides)
    base = ROOT / ".cache" / "bench-tune" / cfg.name
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("configured", "tuned", "training", "wall"):
        subprocess.run(["rm", "-rf", str(base / sub)], check=True)

    tuned_wall = run("tune", args.config, base / "tuned", f"tune.budget_minutes={args.budget_minutes}")
    objective = json.loads((base / "tuned" / "run" / "tune" / "tune.json").read_text())["objective"]
    configured_wall = run("train", args.config, base / "configured")
    configured = summary(base / "configured", configured_wall, objective)
    tuned = summary(base / "tuned", tuned_wall, objective)
    per_epoch = float(np.mean(configured["phase2_seconds"])) if configured["phase2_seconds"] else 10.0
    final_minutes = cfg.tune.final_minutes or args.budget_minutes
    lengths = {"training": max(cfg.phase2.epochs, int(final_minutes * 60 // per_epoch)),
               "wall": cfg.phase2.epochs + max(0, round((tuned_wall - configured_wall) / per_epoch))}
    rows = [("configured", configured), ("tuned (search + full run)", tuned)]
    for name, what in (("training", f"tune.final_minutes = {final_minutes:g} of phase 2"),
                       ("wall", "the tuned run's wall time")):
        wall = run("train", args.config, base / name, f"phase2.epochs={lengths[name]}")
        rows.append((f"configured, phase 2 = {lengths[name]} epochs ({what})", summary(base / name, wall, objective)))
    text = table(cfg, objective, rows, args.budget_minutes)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)


def table(cfg: TrainConfig, objective: str, rows: list[tuple[str, dict]], minutes: float) -> str:
    """rows: configured, tuned, then the configured recipe at equal training time and at equal wall time."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (_, configured), (_, tuned), *equal = rows
    n = len(configured["right"])
    t = tuned["tuning"]
    head = (f"### bench/tune.py: {cfg.name} ({cfg.model.backbone}, {cfg.data.image_size} px), {n} scored test "
            f"images, search budget {minutes:g} min; {stamp}, {platform.machine()}, 2 cores, CPU\n\n"
            f"objective: validation {objective} ({t.why})\n\n"
            f"| recipe | validation {objective} | test accuracy | macro F1 | epochs | wall s |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join(f"| {name} | {r['val']:.4f} | {r['right'].mean():.4f} | {r['macro_f1']:.4f} | {r['epochs']} | "
                   f"{r['wall']:.0f} |\n" for name, r in rows)
    lines = [f"search: {t.head_trials} head and {t.finetune_trials} fine-tuning trials ({t.pruned} pruned) in "
             f"{t.search_seconds:.0f} s; " + ("nothing beat the configured recipe on validation, so it was kept"
                                              if t.kept_configured else "chosen: " + ", ".join(
                                                  f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in t.params.items()))]
    if len(t.image_sizes) > 1:
        lines.append("the chosen recipe by image size, validation " + objective + ": "
                     + ", ".join(f"{k} px {v:.4f}" for k, v in t.image_sizes.items()))
    if t.final_phase2_epochs is not None:
        lines.append(f"tuned final run: phase 2 lengthened from the chosen {t.params['phase2.epochs']} epochs to "
                     f"{t.final_phase2_epochs} ({t.phase2_epoch_seconds:.1f} s an epoch in its trial); "
                     f"{len(tuned['phase2_seconds'])} ran")
    compared = [("configured", configured)] + [(f"configured, {label}", other) for (_, other), label in
                                               zip(equal, ("equal training time", "equal wall time"))]
    for name, other in compared[1:]:
        verdict = "not worse" if tuned["val"] >= other["val"] else "worse"
        lines.append(f"validation, tuned against {name}: {tuned['val']:.4f} against {other['val']:.4f} ({verdict})")
    for name, other in compared:
        d = paired(other["right"], tuned["right"])
        lines.append(f"tuned - {name} on test: {100 * d['diff']:+.1f} points (95 % paired bootstrap "
                     f"{100 * d['low']:+.1f} to {100 * d['high']:+.1f}; McNemar p = {d['mcnemar_p']:.3g}, "
                     f"{d['only_new_right']} images only the tuned model gets right, {d['only_old_right']} only the "
                     "other)")
    return head + body + "\n" + "\n".join(f"- {line}" for line in lines) + "\n"


if __name__ == "__main__":
    main()
