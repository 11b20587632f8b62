"""onnxruntime session for the classifier: CUDA when it really works, CPU otherwise."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort

from .cpus import cpu_allotment

if TYPE_CHECKING:  # not at run time: the training image runs this module (the skew gate) without pydantic-settings
    from .settings import Spinning

log = logging.getLogger("bentoml.serving")  # the logger bentoml serve shows at INFO


def cuda_available() -> bool:
    """onnxruntime-gpu lists CUDA even where it cannot load it: this says what the build has, not what works."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


@functools.cache
def prepare_cuda() -> str | None:
    """Make onnxruntime-gpu's CUDA 13 libraries findable (NVIDIA's wheels from its cuda and cudnn extras, in the gpu
    image; not on the linker's path) and load the CUDA provider's library the way onnxruntime will: None when it
    loads, else why not, naming the library that is missing."""
    if not cuda_available():
        return "this onnxruntime has no CUDA provider (plain onnxruntime, as in the cpu image)"
    with contextlib.redirect_stdout(io.StringIO()):  # preload_dlls prints each library it cannot find
        ort.preload_dlls()
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:
        if "libcuda.so.1" in str(exc):
            return f"{exc}: no NVIDIA driver here (on a GPU node the device plugin mounts it into pods that request " \
                   "nvidia.com/gpu)"
        return f"the CUDA provider cannot load: {exc}"
    return None


# How onnxruntime's idle intra-op threads wait for work (its own default: "always"). Inside a run they wait between
# operators: sleeping costs a wake-up per operator (about 1 ms of a 5 ms batch-1 run of the demo model, bench/
# RESULTS.md); between runs, spinning takes the cores that decoding needs.
SPIN_CONFIG: dict[str, dict[str, str]] = {
    "off": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
    "in_runs": {"session.force_spinning_stop": "1"},  # spin inside a run, stop the moment the last run returns
    "always": {},
}


def bucket(n: int) -> int:
    """The power of two at or above n: the batch size a padded session runs n images as."""
    return 1 << max(0, n - 1).bit_length()


class OnnxClassifier:
    """max_batch and pad: on CUDA (pad=None) every batch runs padded to a power of two up to bucket(max_batch), each
    of those sizes run once before the session is ready. onnxruntime's CUDA provider picks its cuDNN convolution
    kernels by timing them all (cudnn_conv_algo_search EXHAUSTIVE, its default) for each new input shape, which cost
    about a second per batch size on an H200: adaptive batching meets a new size every few batches, and its p99 went
    to 1.4 s (bench/RESULTS.md, 2026-11-30). A few sizes, searched before the first request, keep the fastest kernels
    and take that cost off the requests; padding wastes at most half a batch, cheap where the GPU is latency-bound.
    On CPU there is no per-shape search, so no padding."""

    def __init__(self, path: Path, num_classes: int, image_size: int, device: str = "auto",
                 intra_threads: int = 0, inter_threads: int = 1, spinning: Spinning = "always", max_batch: int = 1,
                 pad: bool | None = None):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # 0: the container's CPU allotment (affinity, cgroup quota) where it is smaller than the host, else
        # onnxruntime's own choice (one per physical core)
        self.intra_threads = intra_threads or cpu_allotment() or 0
        opts.intra_op_num_threads = self.intra_threads
        opts.inter_op_num_threads = inter_threads
        opts.log_severity_level = 3
        for key, value in SPIN_CONFIG[spinning].items():
            opts.add_session_config_entry(key, value)
        wanted = ["CPUExecutionProvider"]
        why_not_cuda = prepare_cuda() if device in ("auto", "cuda") else "device=cpu"
        if why_not_cuda is None:
            wanted.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        # onnxruntime falls back to CPU silently where CUDA does not work (no visible GPU): the provider in use is
        # what the session reports, not what was asked for.
        self.provider = self.session.get_providers()[0]
        if device != "cpu" and self.provider != "CUDAExecutionProvider":
            why_not_cuda = why_not_cuda or "the CUDA provider loaded but found no usable GPU (is one visible here?)"
            if device == "cuda":
                raise RuntimeError(f"device=cuda but onnxruntime cannot use CUDA: {why_not_cuda}")
            (log.warning if cuda_available() else log.info)("CUDA not used (%s): serving on %s", why_not_cuda,
                                                            self.provider)
        self.image_size = image_size
        inp = self.session.get_inputs()[0]
        if inp.name != "images" or inp.type != "tensor(uint8)":
            raise ValueError(f"model input is {inp.name} {inp.type}; the contract is 'images' tensor(uint8)")
        # artifacts exported since heatmaps existed take `heatmap_classes` (optional: a default in the graph)
        self.heatmaps = {o.name for o in self.session.get_outputs()} >= {"heatmaps", "heatmap_labels"}
        pad = self.provider == "CUDAExecutionProvider" if pad is None else pad
        self.buckets = [1 << i for i in range(bucket(max_batch).bit_length())] if pad else []
        probe = self.run(np.zeros((1, image_size, image_size, 3), np.uint8))
        if probe.shape[1] != num_classes:
            raise ValueError(f"model outputs {probe.shape[1]} logits but model.json lists {num_classes} classes")
        t = time.perf_counter()
        for size in self.buckets[1:]:  # each padded size's kernel search, before the first request
            self.run(np.zeros((size, image_size, image_size, 3), np.uint8))
        if self.buckets:
            log.info("batches padded to %s on %s; those sizes warmed up in %.1f s", self.buckets, self.provider,
                     time.perf_counter() - t)
        log.info("onnxruntime session ready: provider=%s, intra-op threads=%s", self.provider,
                 self.intra_threads or "onnxruntime's default (physical cores)")

    def padded(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """The arrays (batch first) grown with zero rows to the batch's bucket, where this session pads."""
        n = len(arrays[0])
        if not self.buckets or n > self.buckets[-1] or bucket(n) == n:
            return list(arrays)
        return [np.concatenate([a, np.zeros((bucket(n) - n, *a.shape[1:]), a.dtype)]) for a in arrays]

    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> logits float32 [N, C]."""
        (batch,) = self.padded(images)
        return self.session.run(["logits"], {"images": batch})[0][: len(images)]

    def explain(self, images: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3], the classes to map int64 [N, M] (an index, or -r: the r-th most likely) -> logits
        [N, C], heatmaps float32 [N, M, h, w], the classes mapped int64 [N, M]. Only where self.heatmaps."""
        batch, classes = self.padded(images, maps)
        out = self.session.run(["logits", "heatmaps", "heatmap_labels"], {"images": batch, "heatmap_classes": classes})
        return tuple(o[: len(images)] for o in out)
