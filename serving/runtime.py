"""onnxruntime session for the classifier: CUDA when it really works, CPU otherwise."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort

from .cpus import cpu_allotment

log = logging.getLogger("serving")


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


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
        if device in ("auto", "cuda") and cuda_available():
            wanted.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        # onnxruntime-gpu lists CUDA as available even where it cannot load it and silently falls back:
        # the provider in use is what the session reports, not what was asked for.
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError("device=cuda requested but onnxruntime could not use CUDA")
        self.image_size = image_size
        inp = self.session.get_inputs()[0]
        if inp.name != "images" or inp.type != "tensor(uint8)":
            raise ValueError(f"model input is {inp.name} {inp.type}; the contract is 'images' tensor(uint8)")
        probe = self.run(np.zeros((1, image_size, image_size, 3), np.uint8))
        if probe.shape[1] != num_classes:
            raise ValueError(f"model outputs {probe.shape[1]} logits but model.json lists {num_classes} classes")
        log.info("onnxruntime session ready: provider=%s, intra-op threads=%s", self.provider,
                 self.intra_threads or "onnxruntime's default (physical cores)")

    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> logits float32 [N, C]."""
        return self.session.run(["logits"], {"images": images})[0]
