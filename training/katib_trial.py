"""`python -m training trial`: one trial of the recipe search that Katib runs in the cluster (k8s/tune/), the local
search being training.tune."""
from __future__ import annotations

from pathlib import Path

from . import run_identity
from .config import TrainConfig
from .job import new_model, prepared_splits
from .runtime import setup_runtime
from .train import Trainer


def metrics_line(row: dict) -> str:
    """Katib's StdOut metrics collector reads name=value pairs from the trial's output."""
    return " ".join(f"{k}={row[k]:.6f}" for k in ("val_acc", "val_macro_f1", "val_loss"))


def trial_job(cfg: TrainConfig) -> float:
    """`python -m training trial`: one trial of a search that Katib runs in the cluster (k8s/tune/). The normal
    trainer with its checkpoints in output_dir, so a killed pod's retry resumes; the validation metrics printed as
    name=value after every epoch (Katib's StdOut collector and its median early stopping read them) and, at the end,
    the restored best epoch's again (a resumed pod's output lacks the epochs before it). The test split is never
    read and nothing is exported: the chosen settings are then trained with `python -m training train`."""
    out = Path(cfg.output_dir)
    device = setup_runtime(cfg)
    splits = prepared_splits(cfg)[0]
    run_identity.claim(out, run_identity.identity(cfg, splits), restart=False)
    trainer = Trainer(cfg, splits, new_model(cfg, len(splits.classes), device), device,
                      on_epoch=lambda row: print(f"phase={row['phase']} epoch={row['epoch']} " + metrics_line(row),
                                                 flush=True))
    trainer.fit()
    best = [r for r in trainer.state.history if (r["phase"], r["epoch"]) == tuple(trainer.state.best_where or ())]
    if best:
        print("best " + metrics_line(best[0]), flush=True)
    return trainer.state.best
