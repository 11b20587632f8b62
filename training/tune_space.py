"""What `python -m training tune` searches (training.tune runs it): each stage's settings and ranges, the
configured recipe's values for them, the image sizes tried, and the objective. The Katib Experiment's search space
(k8s/tune/) is held equal to these by tests/k8s/test_katib.py."""
from __future__ import annotations

import optuna

from .config import TrainConfig, set_dotted
from .diagnostics import imbalance_ratio
from .registry import BACKBONES

IMBALANCED = 1.5  # largest / smallest class in train from which accuracy stops being the objective


def objective_of(cfg: TrainConfig, counts: dict[str, int]) -> tuple[str, str]:
    ratio = imbalance_ratio(counts)
    if cfg.tune.objective != "auto":
        return cfg.tune.objective, f"tune.objective={cfg.tune.objective}"
    if ratio >= IMBALANCED:
        return "val_macro_f1", f"the training classes are imbalanced ({ratio:.1f}:1): accuracy would favour the " \
                               "large ones"
    return "val_acc", f"the training classes are balanced ({ratio:.1f}:1)"


def with_params(cfg: TrainConfig, params: dict) -> TrainConfig:
    """cfg with dotted settings replaced, validated as a whole (a search never builds an invalid config)."""
    tree = cfg.model_dump(mode="json")
    for key, value in params.items():
        set_dotted(tree, key, value)
    return TrainConfig.model_validate(tree)


def dotted(cfg: TrainConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def span(low: float, high: float, configured: float) -> tuple[float, float]:
    """A search range that holds the configured value (its first trial)."""
    return min(low, configured), max(high, configured)


def head_space(trial: optuna.Trial, cfg: TrainConfig) -> dict:
    p1 = cfg.phase1
    hidden = trial.suggest_categorical("model.hidden_dim", sorted({0, 256, 512, cfg.model.hidden_dim or 0}))
    return {"phase1.lr": trial.suggest_float("phase1.lr", *span(1e-4, 1e-2, p1.lr), log=True),
            "phase1.weight_decay": trial.suggest_float("phase1.weight_decay", *span(1e-6, 1e-2, max(p1.weight_decay,
                                                                                                   1e-6)), log=True),
            "phase1.epochs": trial.suggest_int("phase1.epochs", *span(3, 20, p1.epochs)),
            "model.hidden_dim": hidden or None,
            "model.dropout": trial.suggest_float("model.dropout", *span(0.0, 0.5, cfg.model.dropout)),
            "augment.label_smoothing": trial.suggest_float("augment.label_smoothing",
                                                           *span(0.0, 0.2, cfg.augment.label_smoothing)),
            "data.balance": trial.suggest_categorical("data.balance", ["none", "loss_weights", "sampler"])}


def head_defaults(cfg: TrainConfig) -> dict:
    return {"phase1.lr": cfg.phase1.lr, "phase1.weight_decay": max(cfg.phase1.weight_decay, 1e-6),
            "phase1.epochs": cfg.phase1.epochs, "model.hidden_dim": cfg.model.hidden_dim or 0,
            "model.dropout": cfg.model.dropout, "augment.label_smoothing": cfg.augment.label_smoothing,
            "data.balance": cfg.data.balance}


def unfreeze_choices(cfg: TrainConfig) -> list[str]:
    """'top', then each deeper stage down to tune.max_unfreeze stages from the top (and the configured one)."""
    stages = BACKBONES[cfg.model.backbone].stages[1:]
    deeper = list(stages[::-1][1:cfg.tune.max_unfreeze])
    return ["top", *deeper] + ([cfg.phase2.unfreeze] if cfg.phase2.unfreeze not in ["top", *deeper] else [])


def finetune_space(trial: optuna.Trial, cfg: TrainConfig) -> dict:
    p2 = cfg.phase2
    return {"phase2.unfreeze": trial.suggest_categorical("phase2.unfreeze", unfreeze_choices(cfg)),
            "phase2.gradual_every": trial.suggest_int("phase2.gradual_every", 0, max(2, p2.gradual_every)),
            "phase2.head_lr": trial.suggest_float("phase2.head_lr", *span(3e-5, 3e-3, p2.head_lr), log=True),
            "phase2.backbone_lr": trial.suggest_float("phase2.backbone_lr", *span(3e-6, 1e-3, p2.backbone_lr),
                                                      log=True),
            "phase2.epochs": trial.suggest_int("phase2.epochs", 1, max(cfg.tune.max_epochs, p2.epochs))}


def finetune_defaults(cfg: TrainConfig) -> dict:
    p2 = cfg.phase2
    return {"phase2.unfreeze": p2.unfreeze, "phase2.gradual_every": p2.gradual_every,
            "phase2.head_lr": p2.head_lr, "phase2.backbone_lr": p2.backbone_lr, "phase2.epochs": p2.epochs}


def size_choices(cfg: TrainConfig) -> list[int]:
    """The configured image size first, then the others to try, smaller first."""
    size = cfg.data.image_size
    others = cfg.tune.image_sizes
    if others is None:
        others = [max(32, round((size - 64) / 32) * 32), round((size + 64) / 32) * 32]
    return [size, *sorted(set(others) - {size})]


def sized(cfg: TrainConfig, size: int) -> dict:
    """data.image_size and the resize before the centre crop, at the configured ratio R/S (232/224 for 224)."""
    d = cfg.data
    return {"data.image_size": size, "data.resize_size": max(size, round(size * d.resize_size / d.image_size))}


def split_phases(params: dict) -> tuple[dict, dict]:
    """A whole recipe's settings as (phase 1 and everything else, phase 2's), for Search.recipe."""
    return ({k: v for k, v in params.items() if not k.startswith("phase2.")},
            {k: v for k, v in params.items() if k.startswith("phase2.")})
