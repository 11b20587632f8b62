"""onnxruntime session for the classifier: CUDA when it really works, CPU otherwise."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort

from .cpus import cpu_allotment

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


class OnnxClassifier:
    def __init__(self, path: Path, num_classes: int, image_size: int, device: str = "auto",
                 intra_threads: int = 0, inter_threads: int = 1, spinning: bool = True):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # 0: the container's CPU allotment (affinity, cgroup quota) where it is smaller than the host, else
        # onnxruntime's own choice (one per physical core)
        self.intra_threads = intra_threads or cpu_allotment() or 0
        opts.intra_op_num_threads = self.intra_threads
        opts.inter_op_num_threads = inter_threads
        opts.log_severity_level = 3
        if not spinning:  # idle threads sleep instead of spinning on cores the decoding needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
        probe = self.run(np.zeros((1, image_size, image_size, 3), np.uint8))
        if probe.shape[1] != num_classes:
            raise ValueError(f"model outputs {probe.shape[1]} logits but model.json lists {num_classes} classes")
        log.info("onnxruntime session ready: provider=%s, intra-op threads=%s", self.provider,
                 self.intra_threads or "onnxruntime's default (physical cores)")

    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> logits float32 [N, C]."""
        return self.session.run(["logits"], {"images": images})[0]

    def explain(self, images: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3], the classes to map int64 [N, M] (an index, or -r: the r-th most likely) -> logits
        [N, C], heatmaps float32 [N, M, h, w], the classes mapped int64 [N, M]. Only where self.heatmaps."""
        return tuple(self.session.run(["logits", "heatmaps", "heatmap_labels"],
                                      {"images": images, "heatmap_classes": maps}))
