"""Augmentation of whole uint8 batches on the training device, for datasets held in memory (CIFAR-size).

With tiny images, per-image PIL work in DataLoader workers is what limits a GPU. Here a batch of the in-memory
uint8 array goes to the device as it is and is augmented there in a few batched tensor ops, each image with its own
random draws, as the PIL pipeline does:
- random resized crop (area from augment.crop_scale, aspect 3/4..4/3) resampled to image_size by
  torchvision.ops.roi_align, one box per image (bilinear, antialiased when shrinking);
- horizontal flip with probability 1/2;
- colour jitter: brightness, contrast and saturation factors in [1 - j, 1 + j].
Rotation and TrivialAugment are per-image PIL operations and are not offered here (the config says so).
Draws come from torch's global RNG, which the trainer seeds per step, so a resumed run sees the same batches.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from .config import AugmentConfig

GRAY = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], device) -> torch.Tensor:
    """[n, 4] boxes (x1, y1, x2, y2) in pixels: area fraction in scale, log-uniform aspect in [3/4, 4/3]."""
    area = height * width * torch.empty(n, device=device).uniform_(*scale)
    ratio = torch.exp(torch.empty(n, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)))
    w = torch.sqrt(area * ratio).clamp(1, width)
    h = torch.sqrt(area / ratio).clamp(1, height)
    x1 = torch.rand(n, device=device) * (width - w)
    y1 = torch.rand(n, device=device) * (height - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def resample(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box, bilinearly resampled to size x size (aligned: a box of the whole image is the image)."""
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None], boxes.to(x.dtype)], dim=1)
    # sampling_ratio=0: ceil(box / output) samples per output pixel, averaged: antialiased when shrinking, one
    # exact sample at the pixel centre at 1:1
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """x float [N,3,H,W] in [0,1]; per-image brightness, contrast, saturation factors in [1-s, 1+s]."""
    n = len(x)

    def factor():
        return torch.empty(n, 1, 1, 1, device=x.device).uniform_(max(0.0, 1 - strength), 1 + strength)

    x = (x * factor()).clamp_(0, 1)
    gray = (x * GRAY.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (mean + (x - mean) * factor()).clamp_(0, 1)
    return (gray + (x - gray) * factor()).clamp_(0, 1)


class BatchAugment:
    def __init__(self, image_size: int, aug: AugmentConfig):
        self.size, self.aug = image_size, aug

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,H,W,3] on the device -> float [N,3,S,S] in [0,1]."""
        x = images.permute(0, 3, 1, 2).float().div_(255)
        n, _, h, w = x.shape
        x = resample(x, crop_boxes(n, h, w, self.aug.crop_scale, x.device), self.size)
        if self.aug.hflip:
            flip = torch.rand(n, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.aug.color_jitter:
            x = jitter(x, self.aug.color_jitter)
        return x.clamp_(0, 1)
