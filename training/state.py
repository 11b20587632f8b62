"""Where a training run is (TrainState, checkpointed as a plain dict) and the early-stopping rule that reads it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Where the run is, besides weights, optimiser and RNGs."""
    phase: int = 1
    epoch: int = 0  # epochs finished in this phase
    batch: int = 0  # batches finished in this epoch (non-zero in a mid-epoch checkpoint)
    best: float | None = None
    best_where: tuple[int, int] | None = None  # (phase, epoch) of the best validation value
    patience: int = 0  # epochs since it improved
    history: list[dict] = field(default_factory=list)
    running: dict | None = None  # this epoch's partial sums at a mid-epoch checkpoint


@dataclass
class EarlyStopping:
    """Restore-best early stopping on one validation metric; its counters live in TrainState."""
    metric: str
    patience: int

    @property
    def mode(self) -> str:
        return "min" if self.metric == "val_loss" else "max"

    def update(self, st: TrainState, value: float, where: tuple[int, int]) -> bool:
        """Record an epoch's value; True if it is the best so far."""
        better = st.best is None or (value < st.best if self.mode == "min" else value > st.best)
        if better:
            st.best, st.best_where, st.patience = value, where, 0
        else:
            st.patience += 1
        return better

    def should_stop(self, st: TrainState) -> bool:
        return st.patience >= self.patience
