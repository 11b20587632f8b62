"""torchvision transforms v2 for training (augmentation) and evaluation (the serving contract).

The evaluation transform is the reference the service's PIL/numpy preprocessing must equal: resize the shorter side
to R with the recorded interpolation, centre-crop S. Both read R, S and interpolation from one place (model.json).
"""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from .config import AugmentConfig, DataConfig

INTERPOLATION = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                 "bicubic": InterpolationMode.BICUBIC}


def eval_transform(resize_size: int, image_size: int, interpolation: str) -> v2.Compose:
    return v2.Compose([
        v2.Resize(resize_size, interpolation=INTERPOLATION[interpolation]),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
    ])


def train_transform(data: DataConfig, aug: AugmentConfig) -> v2.Compose:
    interp = INTERPOLATION[data.interpolation]
    steps = [v2.RandomResizedCrop(data.image_size, scale=aug.crop_scale, interpolation=interp)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation:
        steps.append(v2.RandomRotation(aug.rotation, interpolation=interp))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5)))
    if aug.trivial_augment:
        steps.append(v2.TrivialAugmentWide(interpolation=interp))
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


def batch_mixer(aug: AugmentConfig, num_classes: int) -> v2.Transform | None:
    """MixUp / CutMix act on whole batches (after collation), turning labels into soft targets."""
    options = []
    if aug.mixup_alpha > 0:
        options.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        options.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not options:
        return None
    return options[0] if len(options) == 1 else v2.RandomChoice(options)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float [0,1]; mean/std normalisation lives inside the model."""
    return images.float().div_(255)
