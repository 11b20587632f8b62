"""Where and how the tensors run: device choice, determinism, mixed precision, and the one conversion of uint8
images to the model's float input (training steps, evaluation and the phase-1 feature cache all call it)."""
from __future__ import annotations

import contextlib
import os

import torch

from .config import TrainConfig
from .seeds import seed_all


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None  # CPU runs in fp32: deterministic, and bf16 buys little on these cores
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The mixed-precision context, or nothing (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float [0,1] on the device; mean/std normalisation lives inside the model (and the ONNX)."""
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def deterministic(cfg: TrainConfig, device: torch.device) -> bool:
    """cfg.deterministic, or by default: on for CPU (free), off for CUDA (cuDNN autotuning is worth more)."""
    return cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"


def setup_runtime(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if deterministic(cfg, device):
        # cuBLAS needs a fixed workspace to be reproducible; set before its first call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        # CPU: every op used has a deterministic kernel (an error otherwise); CUDA: a few have none, and PyTorch
        # warns naming them rather than stopping the run
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    else:
        torch.backends.cudnn.benchmark = True
    return device
