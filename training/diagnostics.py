"""What every run is told about its own training, tuned or not (issue 34): validation still improving when the
budget ran out (more epochs may help), train and validation diverging (overfitting: fewer unfrozen stages, more
regularisation), classes imbalanced (accuracy hides the rare ones). Read from the epochs' history and the training
split's class counts; logged as warnings and put first in the report (report/diagnostics.json).

The thresholds are plain and named here, so a finding can be checked by hand against the epochs table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import TrainConfig

IMBALANCE_RATIO = 3.0  # largest / smallest class in train at or above which accuracy is a poor summary
GAP_POINTS = 15.0  # train accuracy above validation accuracy by this much at the end: memorising
LOSS_RISE = 0.10  # validation loss this far (relative) above its phase's minimum at the end, train loss falling


@dataclass(frozen=True)
class Finding:
    kind: str  # still_improving | overfitting | imbalanced
    message: str  # what was seen, with the numbers, and what to try
    evidence: dict

    def as_dict(self) -> dict:
        return asdict(self)


def higher_is_better(metric: str) -> bool:
    return metric != "val_loss"


def still_improving(history: list[dict], metric: str) -> Finding | None:
    """The last phase's best `metric` came at its last epoch, a strict improvement: it stopped by budget."""
    phase = history[-1]["phase"] if history else None
    values = [r[metric] for r in history if r["phase"] == phase]
    if len(values) < 2:
        return None
    sign = 1 if higher_is_better(metric) else -1
    if sign * values[-1] <= max(sign * v for v in values[:-1]):
        return None
    recent = ", ".join(f"{v:.4f}" for v in values[-4:])
    return Finding("still_improving",
                   f"validation {metric} was still improving at the last epoch of phase {phase} ({recent}): the run "
                   f"stopped at its budget, not at convergence; more epochs (phase{phase}.epochs, now {len(values)}) "
                   "may help", {"phase": phase, "metric": metric, "values": values})


def overfitting(history: list[dict], cfg: TrainConfig) -> Finding | None:
    """At the end of the last phase, train accuracy far above validation's, or validation loss rising from its
    minimum while the training loss kept falling."""
    phase = history[-1]["phase"] if history else None
    rows = [r for r in history if r["phase"] == phase]
    if len(rows) < 2:
        return None
    last = rows[-1]
    gap = 100 * (last["train_acc"] - last["val_acc"])
    low = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    rising = (last["val_loss"] > rows[low]["val_loss"] * (1 + LOSS_RISE)
              and last["train_loss"] < rows[low]["train_loss"])
    if gap < GAP_POINTS and not rising:
        return None
    seen = [f"train accuracy {last['train_acc']:.3f} vs validation {last['val_acc']:.3f} ({gap:.1f} points)"]
    if rising:
        seen.append(f"validation loss lowest at epoch {rows[low]['epoch']} ({rows[low]['val_loss']:.4f}), "
                    f"{last['val_loss']:.4f} at the end while the training loss fell")
    return Finding("overfitting", f"train and validation diverge in phase {phase}: " + "; ".join(seen)
                   + ". The model memorises the training images: " + remedies(cfg, phase),
                   {"phase": phase, "gap_points": round(gap, 2), "val_loss_rising": rising,
                    "val_loss_lowest_at_epoch": rows[low]["epoch"]})


def remedies(cfg: TrainConfig, phase: int) -> str:
    stages = cfg.stages_to_unfreeze()
    fewer = (f"unfreeze fewer stages (phase2.unfreeze={stages[-2]}, now {cfg.phase2.unfreeze}), "
             if phase == 2 and len(stages) > 1 else "")
    return (f"{fewer}stronger augmentation (augment.trivial_augment, augment.mixup_alpha) or weight decay, fewer "
            "epochs, or more images")


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Largest class over smallest (an empty class counts as one image)."""
    return max(counts.values()) / max(min(counts.values()), 1)


def imbalanced(train_counts: dict[str, int]) -> Finding | None:
    """The largest class in train at least IMBALANCE_RATIO times the smallest."""
    if len(train_counts) < 2:
        return None
    big = max(train_counts, key=train_counts.get)
    small = min(train_counts, key=train_counts.get)
    ratio = imbalance_ratio(train_counts)
    if ratio < IMBALANCE_RATIO:
        return None
    return Finding("imbalanced",
                   f"classes are imbalanced: '{big}' has {train_counts[big]} training images, '{small}' "
                   f"{train_counts[small]} ({ratio:.1f}:1). Accuracy hides the rare classes: read per-class recall "
                   "(first in the report) and macro-F1; early_stop.metric=val_macro_f1 chooses epochs by it, and "
                   "data.balance=sampler or loss_weights trains with the classes evened out (compare both)",
                   {"ratio": round(ratio, 2), "largest": big, "smallest": small, "train_counts": train_counts})


def review(history: list[dict], train_counts: dict[str, int], cfg: TrainConfig) -> list[Finding]:
    found = [still_improving(history, cfg.early_stop.metric), overfitting(history, cfg), imbalanced(train_counts)]
    return [f for f in found if f is not None]
