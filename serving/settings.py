"""Service settings: one pydantic model, from a YAML file (SERVING_CONFIG) and SERVING_* environment variables."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.precision import Precision

Spinning = Literal["off", "in_runs", "always"]  # serving.runtime.SPIN_CONFIG says what each sets
RunMode = Literal["adaptive", "shared"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="forbid", protected_namespaces=())

    model_dir: Path | None = Field(None, description="a version directory (model.onnx + model.json)")
    artifacts_root: Path | None = Field(None, description="root holding <model_name>/LATEST")
    model_name: str | None = None
    v2_model_name: str | None = Field(None, description="the model's name on the Open Inference Protocol routes "
                                                        "(/v2/models/<name>); default: model.json's name")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = Field(
        "auto", description="auto: fp16 on CUDA when the artifact has it; on CPU the first int8 file (8-bit weights, "
                            "then 7-bit) that passes the canary check on this node; else fp32 (contract.precision)")
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_latency_ms: int = Field(2000, ge=1, description="latency budget: a request whose images still wait for "
                                "their onnxruntime run this long after decoding is answered 503 (load shedding)")
    batching: bool = Field(True, description="false: every request runs alone (for comparison)")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads of the whole server, shared out between "
                                  "the API workers (at least 1 each); 0: the container's CPU allotment (affinity, "
                                  "cgroup quota), else onnxruntime's default")
    inter_op_threads: int = Field(1, ge=1)
    run_mode: RunMode = Field("adaptive", description="adaptive: on CPU, a request that arrives alone runs on all "
                              "of the worker's onnxruntime threads, and under load each run takes one thread, as many "
                              "runs at once as threads (a second session of the same file, on one thread); shared: "
                              "every run on all threads, model_calls_in_flight at a time; measured in "
                              "bench/serve_cpu.py")
    spinning: Spinning = Field("in_runs", description="how the idle onnxruntime threads of a run on all threads "
                               "wait: off (sleep), in_runs (spin inside a run, sleep between runs), always "
                               "(onnxruntime's own default); in_runs costs throughput under load where run_mode is "
                               "shared (measured in bench/serve_cpu.py)")
    api_workers: int = Field(1, ge=1, description="processes, each decoding and running its own onnxruntime session")
    decode_threads: int = Field(0, ge=0, description="per API worker: images decoded at once, the others queue in "
                                                     "arrival order; 0: the container's CPU allotment")
    model_calls_in_flight: int = Field(1, ge=1, description="per API worker, where run_mode is shared: concurrent "
                                       "onnxruntime runs; requests arriving meanwhile share the next run")
    max_request_bytes: int = Field(32 << 20, ge=1024)
    body_timeout_seconds: float = Field(30.0, gt=0, lt=60, description="a request body not fully received by then is "
                                        "answered 408 (below BentoML's 60 s request timeout, which answers 504)")
    upload_memory_bytes: int = Field(16 << 20, ge=0, description="uploads up to this size stay in memory (0: all); a "
                                     "larger one goes to a temporary file, one thread hop per 64 KB on the event loop")
    max_image_pixels: int = Field(25_000_000, ge=1, description="pixels one image may decode to (after a JPEG's "
                                  "DCT scaling): about 8 bytes and 30 ns each at worst (RGBA PNG)")
    max_request_pixels: int = Field(50_000_000, ge=1, description="decoded pixels of all a request's images: "
                                    "bounds the CPU one request costs (1.5 s at worst)")
    max_images_per_request: int = Field(64, ge=1)
    max_top_k: int = Field(20, ge=1)
    max_occlusion_images: int = Field(2, ge=0, description="images one /explain request may ask occlusion maps of "
                                      "(method=occlusion): each costs one model run per heatmap cell, 50 at 224 px; "
                                      "0 turns the method off")
    max_heatmap_pngs: int = Field(128, ge=0, description="PNG heatmaps one /explain request may ask for (images x "
                                  "classes mapped; format=png): each is rendered over its crop and sent, about 6 ms "
                                  "and 50 KB at 224 px; 0 turns PNGs off (grids stay)")
    verify_sha256: bool = True
    drain_seconds: float = Field(1.0, ge=0, description="after SIGTERM, serve this long while /readyz says 503")
    drain_timeout_seconds: float = Field(20.0, ge=0, description="then wait at most this long for in-flight requests")
    drain_file: Path | None = Field(None, description="set by serving.run: while it exists, readiness is false")
    access_log: bool = Field(True, description="one log line per HTTP request (costs CPU at high request rates)")


def load_settings() -> Settings:
    """YAML from $SERVING_CONFIG (the ConfigMap), overridden field by field by SERVING_* variables."""
    values = {}
    if path := os.environ.get("SERVING_CONFIG"):
        values = yaml.safe_load(Path(path).read_text()) or {}
        values = {k: v for k, v in values.items() if f"SERVING_{k.upper()}" not in os.environ}
    return Settings(**values)
