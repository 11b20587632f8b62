"""final/model.pt: the trained weights with everything export and evaluate need, as one typed record.

Written once at the end of a run (training.job.save_final) and read by `python -m training export` and `evaluate`;
the checkpoint file itself (sha256 header, atomic write) is training.checkpoint's. Stored as plain types (dicts,
lists, tensors) so that the file does not depend on these classes' import paths; bundles written before this
record existed load the same way (their keys are these fields).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.card import Metrics, Tuning
from contract.monitoring import Monitoring
from contract.preprocess import PreprocessSpec

from . import checkpoint


@dataclass
class FinalModel:
    name: str
    classes: list[str]
    config: dict[str, Any]  # the run's TrainConfig, as JSON
    preprocess: PreprocessSpec
    metrics: Metrics
    temperature: float
    state_dict: dict[str, Any]
    monitoring: Monitoring | None = None
    history: list[dict] = field(default_factory=list)  # one row per epoch (training.train.TrainState.history)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of the images left out
    tuning: Tuning | None = None  # how the recipe was chosen (training.tune)

    def save(self, path: Path) -> None:
        checkpoint.atomic_save({
            "name": self.name, "classes": self.classes, "config": self.config, "preprocess": asdict(self.preprocess),
            "metrics": self.metrics.model_dump(mode="json"), "temperature": self.temperature,
            "monitoring": None if self.monitoring is None else self.monitoring.model_dump(mode="json"),
            "history": self.history, "skipped": self.skipped, "state_dict": self.state_dict,
            "tuning": None if self.tuning is None else self.tuning.model_dump(mode="json")}, path)

    @classmethod
    def load(cls, path: Path) -> FinalModel:
        raw = checkpoint.load(path)
        return cls(name=raw["name"], classes=raw["classes"], config=raw["config"],
                   preprocess=PreprocessSpec(**raw["preprocess"]), metrics=Metrics.model_validate(raw["metrics"]),
                   temperature=raw.get("temperature", 1.0), state_dict=raw["state_dict"],
                   monitoring=None if raw.get("monitoring") is None else Monitoring.model_validate(raw["monitoring"]),
                   history=raw.get("history", []), skipped=raw.get("skipped", []),
                   tuning=None if raw.get("tuning") is None else Tuning.model_validate(raw["tuning"]))
