"""The classifier: input normalisation -> backbone -> head. Input is float [0,1] NCHW RGB; the ONNX export wraps it
with the uint8 NHWC contract (training.export)."""
from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, build_backbone
from .config import ModelConfig


class Head(nn.Module):
    """pooled features -> optional hidden layer (ReLU) -> dropout -> linear."""

    def __init__(self, width: int, num_classes: int, hidden_dim: int | None, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        if hidden_dim:
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))
        self.backbone = backbone.features
        self.head = Head(backbone.width, num_classes, hidden_dim, dropout)
        self.stages = backbone.stages  # plain dict: not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


def build_model(cfg: ModelConfig, num_classes: int) -> Classifier:
    backbone = build_backbone(cfg.backbone, cfg.weights, cfg.download_weights)
    return Classifier(backbone, num_classes, cfg.hidden_dim, cfg.dropout)


def set_trainable(model: Classifier, stages: list[str], batchnorm: str = "frozen") -> None:
    """Head always trains; backbone stages in `stages` train; the rest get no gradients.

    BatchNorm of frozen stages stays in inference mode so running statistics cannot drift; with batchnorm='frozen'
    that holds for unfrozen stages too (small fine-tuning batches give noisy statistics).
    """
    model.backbone.requires_grad_(False)
    for name in stages:
        model.stages[name].requires_grad_(True)
    if batchnorm == "frozen":
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)
    model.trainable_stages = list(stages)
    model.batchnorm_policy = batchnorm


def train_mode(model: Classifier) -> None:
    """model.train(), except the parts that must keep inference behaviour (frozen stages, frozen BatchNorm)."""
    model.train()
    trainable = set(getattr(model, "trainable_stages", []))
    for name, stage in model.stages.items():
        if name not in trainable:
            stage.eval()
    if getattr(model, "batchnorm_policy", "frozen") == "frozen":
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
