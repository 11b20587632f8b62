"""What a recipe search leaves to read (training.tune): <output_dir>/tune/trials.csv (every trial of both
searches: settings, state, value, seconds), tune.json (the `tuning` block of model.json), and two plots in the
report (each trial's validation objective with the best so far; which settings mattered, by Optuna's fANOVA)."""
from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from contract.card import Tuning
from contract.files import replaced, write_atomic


def seconds(t: optuna.trial.FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return round((t.datetime_complete - t.datetime_start).total_seconds(), 2)


def write_trials(folder: Path, studies: Sequence[optuna.Study], tuning: Tuning) -> None:
    keys = sorted({k for s in studies for t in s.trials for k in t.params})
    with replaced(folder / "trials.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["search", "trial", "state", "value", "last_epoch_reported", "seconds", "configured", *keys])
        for s in studies:
            for t in s.trials:
                last = max(t.intermediate_values) if t.intermediate_values else None
                w.writerow([s.study_name, t.number, t.state.name.lower(), t.value, last, seconds(t),
                            bool(t.user_attrs.get("configured")), *[t.params.get(k, "") for k in keys]])
    write_atomic(folder / "tune.json", tuning.model_dump_json(indent=2))


def plot_search(report: Path, studies: Sequence[optuna.Study], objective: str, configured: float) -> None:
    """configured: the configured recipe's value, both phases as configured (a line on the last search's plot)."""
    report.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 4), squeeze=False)
    for ax, s in zip(axes[0], studies):
        plot_history(ax, s, objective)
    axes[0][-1].axhline(configured, color="red", ls="--", lw=1, label="the configured recipe, both phases")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report / "tune_history.png", dpi=100)
    plt.close(fig)
    importances = {s.study_name: importance(s) for s in studies}
    importances = {k: v for k, v in importances.items() if v}
    if not importances:
        return
    fig, axes = plt.subplots(1, len(importances), figsize=(5.5 * len(importances), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], importances.items()):
        ax.barh(list(values)[::-1], list(values.values())[::-1])
        ax.set_title(f"{name}: share of the objective's variance")
        ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(report / "tune_importance.png", dpi=100)
    plt.close(fig)


def plot_history(ax, s: optuna.Study, objective: str) -> None:
    done = [t for t in s.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in s.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], label="trial")
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="grey", label="pruned (its last epoch)")
    configured = [t for t in done if t.user_attrs.get("configured")]
    ax.scatter([t.number for t in configured], [t.value for t in configured], s=120, facecolors="none",
               edgecolors="red", label="its configured settings")
    best, line = float("-inf"), []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        line.append((t.number, best))
    if line:
        ax.step(*zip(*line), where="post", color="green", label="best so far")
    ax.set_title(f"{s.study_name} search: {objective} (validation)")
    ax.set_xlabel("trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def importance(s: optuna.Study) -> dict[str, float]:
    """fANOVA importances; none where there are too few finished trials or nothing varied."""
    if len([t for t in s.trials if t.state == TrialState.COMPLETE]) < 3:
        return {}
    try:
        with warnings.catch_warnings():  # "importances will be equal" where trials tie: the bars say so
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(s)
    except (RuntimeError, ValueError):
        return {}
