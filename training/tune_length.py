"""How long the tuned recipe's final run trains (training.tune): its phase 2 lengthened to the epochs that fill
tune.final_minutes, at the seconds per epoch its own trial measured (each trial records them under EPOCH_SECONDS)."""
from __future__ import annotations

import statistics

from contract.card import Tuning

from .config import TrainConfig
from .log import event

EPOCH_SECONDS = "phase2_epoch_seconds"  # a trial's user attribute: its phase-2 epochs' seconds, in order


def median_seconds(seconds: list[float]) -> float | None:
    return float(statistics.median(seconds)) if seconds else None


def final_minutes(cfg: TrainConfig) -> float | None:
    """The final run's budget: tune.final_minutes, by default the search's."""
    return cfg.tune.final_minutes or cfg.tune.budget_minutes


def final_length(cfg: TrainConfig, epochs: int, per_epoch: float | None) -> int | None:
    """Phase 2's epochs in the final run where tune.final_minutes (default: the search's budget) lengthens the
    chosen recipe's: as many as fit, where that is more; None where nothing lengthens it. Why: the search can afford
    only short trials, and on data where epochs are the limit (the CIFAR-10 subset: the configured recipe given 18
    epochs instead of 4 gained 2.4 points of validation) a recipe chosen among short ones and trained as short loses
    to a plain recipe trained long. Early stopping on the objective ends a lengthened run where validation stops
    improving, and the best epoch is restored."""
    minutes = final_minutes(cfg)
    if minutes is None or not per_epoch or epochs == 0:
        return None
    fits = int(minutes * 60 // per_epoch)
    return fits if fits > epochs else None


def log_length(cfg: TrainConfig, tuning: Tuning) -> None:
    if tuning.final_phase2_epochs is None:
        return
    minutes = final_minutes(cfg)
    event(f"the final run's phase 2: {tuning.final_phase2_epochs} epochs, the chosen "
          f"{tuning.params['phase2.epochs']} lengthened to fill tune.final_minutes={minutes:g} at "
          f"{tuning.phase2_epoch_seconds:.1f} s an epoch; early stopping on {cfg.early_stop.metric} (patience "
          f"{cfg.early_stop.patience}) ends it sooner where validation stops improving",
          epochs=tuning.final_phase2_epochs, chosen=tuning.params["phase2.epochs"])
