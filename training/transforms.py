"""Training augmentation (torchvision transforms v2) and evaluation (the contract's preprocessing, the service's own).

Evaluation, the skew gate and the service run one implementation, contract.preprocess (resize the shorter side to R
with the recorded interpolation, centre-crop S), so the test accuracy in model.json is measured on the pixels the
service will compute. tests/serving/test_preprocess_parity.py holds it equal to torchvision's Resize + CenterCrop.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from contract.preprocess import PreprocessSpec, preprocess, resize_crop

from .config import AugmentConfig, DataConfig

INTERPOLATION = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                 "bicubic": InterpolationMode.BICUBIC}


class EvalTransform:
    """An image file's bytes (or an in-memory image) -> uint8 [3, S, S] tensor through contract.preprocess, the
    service's own function from the bytes on, JPEG draft decoding included (a class: DataLoader workers pickle it)."""
    takes_file_bytes = True  # training.loader.SeededImages hands it ImageSet.source(i), not a decoded image

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    def __call__(self, source: bytes | Image.Image) -> torch.Tensor:
        if isinstance(source, bytes):
            array = preprocess(source, self.spec, max_pixels=1 << 40)  # the dataset's own files: no request limit
        else:
            array = resize_crop(source, self.spec)
        return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def eval_transform(spec: PreprocessSpec) -> EvalTransform:
    return EvalTransform(spec)


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
