"""The request core: image files or pixels in; probabilities, answers and counted metrics out. No HTTP, no BentoML.

One `Core` per serving process holds the pinned model version (its card and its onnxruntime session) and everything
a request goes through: decoding on a bounded pool of threads in arrival order, the Coalescer that lets concurrent
requests share one onnxruntime run, and the metrics of each run. The HTTP layers (`serving.service` for /predict*,
`serving.v2` for the Open Inference Protocol) are handed the same Core and only translate: bytes in, a `RequestError`
or an answer out.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

import anyio
import numpy as np
from pydantic import BaseModel

from contract import monitoring
from contract.card import ArtifactError, ModelCard, load_card
from contract.errors import RequestError
from contract.precision import Chosen, choose
from contract.preprocess import PixelBudget, preprocess
from contract.publish import resolve
from contract.scores import softmax

from . import metrics
from .coalesce import Coalescer
from .cpus import cpu_allotment
from .runtime import OnnxClassifier, cuda_available
from .settings import Settings

log = logging.getLogger("bentoml.serving")  # the logger bentoml serve shows at INFO


class Readable(Protocol):
    """An uploaded file, read where the HTTP layer left it (in memory or spooled), in a decoding thread."""

    def read_bytes(self) -> bytes: ...


ImageFile = bytes | Readable


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    confidence: float
    top_k: list[Label]
    model: str
    version: str


class Served(BaseModel):
    """Which file serves and why: /model_info, the V2 readiness answer."""
    precision: str | None
    provider: str | None
    note: str


class Core:
    """Built cheaply at import (the HTTP routes are bound to it then); `load()` opens the model in the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.card: ModelCard | None = None
        self.chosen: Chosen | None = None
        self.error: str | None = "not loaded yet"

    # ---- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """The pinned version's card and session; on any failure the core stays unready and says why."""
        s = self.settings
        try:
            version_dir = resolve(s.model_dir, s.artifacts_root, s.model_name)
            self.card = load_card(version_dir, verify=s.verify_sha256)
            self.chosen = self._open(version_dir)
        except (ArtifactError, OSError) as exc:
            self.error = str(exc)
        except Exception as exc:  # a model that does not match its card must not serve
            self.error = f"model.onnx rejected: {exc}"
        if self.chosen is None:
            log.error("model not loaded, service stays unready: %s", self.error)
            return
        self.error = None
        self._start_metrics()
        # decoding threads beyond the cores only share them: every request in the pool finishes late together
        # (12 MP photos at c = 32: p99 2.1x p50), where a queue served in arrival order keeps the tail short (1.3x)
        self.decoders = anyio.CapacityLimiter(s.decode_threads or cpu_allotment() or os.cpu_count() or 1)
        self.runs = anyio.CapacityLimiter(s.model_calls_in_flight)
        self.coalescer = Coalescer(self._run, s.max_batch_size, s.model_calls_in_flight,
                                   max_wait=s.max_latency_ms / 1000, combine=s.batching)

    def _open(self, version_dir: Path) -> Chosen:
        """The file `precision` picks (contract.precision: int8 on CPU where it passes the canary check here, fp16
        on CUDA, else fp32); each session runs a warm-up probe as it opens."""
        s, card = self.settings, self.card

        def open_session(path: Path) -> OnnxClassifier:
            return OnnxClassifier(path, len(card.classes), card.image_size, s.device, self._intra_threads(),
                                  s.inter_op_threads, s.spinning)

        def pick(on_cuda: bool) -> Chosen:
            return choose(version_dir, card, s.precision, on_cuda, open_session, lambda clf, x: clf.run(x),
                          s.verify_sha256)

        on_cuda = s.device != "cpu" and cuda_available()
        chosen = pick(on_cuda)
        if on_cuda and chosen.session.provider != "CUDAExecutionProvider":
            chosen = pick(False)  # the build has CUDA but it did not load: choose as on CPU (fp16 there is slow)
        (log.warning if chosen.canary_passed is False else log.info)(
            "serving %s on %s: %s", chosen.path.name, chosen.session.provider, chosen.note)
        return chosen

    def _intra_threads(self) -> int:
        """onnxruntime's threads per process: the cores shared out between the API workers, each with a session."""
        s = self.settings
        if s.intra_op_threads or s.api_workers == 1:
            return s.intra_op_threads  # 0: the allotment, or onnxruntime's own choice (serving.runtime)
        return max(1, (cpu_allotment() or os.cpu_count() or 1) // s.api_workers)

    def _start_metrics(self) -> None:
        card, chosen = self.card, self.chosen
        metrics.model_info.labels(name=card.name, version=card.version, provider=chosen.session.provider,
                                  precision=chosen.precision).set(1)
        if chosen.canary_passed is not None:
            metrics.int8_canary.labels(name=card.name, version=card.version).set(chosen.canary_passed)
        if card.test_accuracy is not None:
            metrics.offline_accuracy.labels(name=card.name, version=card.version).set(card.test_accuracy)
        self.thresholds = _monitoring_gauges(card)
        # the labelled series, looked up once (a lookup takes a lock and a dict)
        self.predicted = [metrics.predictions.labels(predicted=c) for c in card.classes]
        self.confident = {name: metrics.atc_confident.labels(score=name) for name in self.thresholds or {}}
        self.inference_seconds = metrics.inference_seconds.labels(provider=chosen.session.provider)

    # ---- state -----------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """A model serves and the process is not draining (serving.run got SIGTERM and still serves)."""
        drain = self.settings.drain_file
        return self.chosen is not None and not (drain is not None and drain.exists())

    def check_loaded(self) -> None:
        if self.chosen is None:
            raise RequestError("model_unavailable", f"no model loaded: {self.error}", 503)

    def served(self) -> Served:
        if self.chosen is None:
            return Served(precision=None, provider=None, note=f"no model loaded: {self.error}")
        return Served(precision=self.chosen.precision, provider=self.chosen.session.provider, note=self.chosen.note)

    def info(self) -> dict:
        """Classes, version, preprocessing, the offline test metrics and which file serves (precision) and why."""
        self.check_loaded()
        card = self.card
        test = card.metrics.get("test", {})
        return {"name": card.name, "version": card.version, "classes": card.classes,
                "image_size": card.image_size, "resize_size": card.resize_size,
                "interpolation": card.interpolation, "served": self.served().model_dump(),
                "test_metrics": {k: test[k] for k in ("accuracy", "macro_f1", "roc_auc", "n") if k in test}}

    # ---- requests --------------------------------------------------------------------------------------------
    async def predict(self, files: list[ImageFile], top_k: int) -> list[Prediction]:
        return [self.answer(row, top_k) for row in await self.probabilities(files)]

    async def probabilities(self, files: list[ImageFile] | None, pixels: np.ndarray | None = None) -> np.ndarray:
        """Temperature-scaled probabilities [N,C] of image files, or of preprocessed uint8 [N,S,S,3] pixels (the Open
        Inference Protocol's `images` input); every prediction is counted in the metrics."""
        self.check_loaded()
        if pixels is None:
            pixels = await self._decode_all(files)
        return await self.coalescer.run(pixels)

    def answer(self, probs: np.ndarray, top_k: int) -> Prediction:
        classes = self.card.classes
        order = np.argsort(-probs, kind="stable")[:min(top_k, len(classes))]
        return Prediction(label=classes[order[0]], confidence=float(probs[order[0]]), model=self.card.name,
                          version=self.card.version,
                          top_k=[Label(label=classes[i], probability=float(probs[i])) for i in order])

    def feedback(self, predicted: str, actual: str) -> dict:
        """Ground truth for an earlier prediction; stateless, so any replica can take it."""
        self.check_loaded()
        unknown = [f"{k}='{v}'" for k, v in (("predicted", predicted), ("actual", actual))
                   if v not in self.card.classes]
        if unknown:
            raise RequestError("unknown_class", f"unknown class {', '.join(unknown)}; the model's classes are "
                               f"{self.card.classes}", 422)
        outcome = "correct" if predicted == actual else "incorrect"
        metrics.feedback.labels(outcome=outcome, actual=actual).inc()
        return {"outcome": outcome}

    # ---- the work behind a request ---------------------------------------------------------------------------
    def _prepare(self, data: ImageFile, budget: PixelBudget) -> np.ndarray:
        """An image file's pixels; an upload is read here, in the decoding thread, so a phone photo's megabytes are
        not copied on the event loop that every other request waits on."""
        if not isinstance(data, bytes):
            data = data.read_bytes()
        start = time.perf_counter()
        array = preprocess(data, self.card.spec, self.settings.max_image_pixels, budget)
        metrics.preprocess_seconds.observe(time.perf_counter() - start)
        return array

    async def _decode_all(self, files: list[ImageFile]) -> np.ndarray:
        """The images of a request, decoded one at a time: each waits for a decoding thread on its own, in arrival
        order, so a 64-image request holds at most one thread and a single photo arriving behind it waits for the
        images decoding now, not for the whole request (issue 27: 37 s behind two 64-PNG requests before). The
        request's decoded pixels are bounded as a whole by max_request_pixels."""
        budget = PixelBudget(self.settings.max_request_pixels)
        arrays = [await anyio.to_thread.run_sync(self._prepare, f, budget, limiter=self.decoders) for f in files]
        return np.stack(arrays)

    async def _run(self, batch: np.ndarray) -> np.ndarray:
        """The Coalescer's call: one onnxruntime run in a worker thread (the event loop keeps answering)."""
        return await anyio.to_thread.run_sync(self._probabilities, batch, limiter=self.runs)

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = self.chosen.session.run(np.ascontiguousarray(batch, dtype=np.uint8))
        self.inference_seconds.observe(time.perf_counter() - start)
        metrics.batch_size.observe(len(batch))
        probs = softmax(logits, self.card.temperature)
        self._count(probs)
        return probs

    def _count(self, probs: np.ndarray) -> None:
        """The metrics of a run's predictions, counted once per run rather than per request."""
        best = probs.argmax(axis=1)
        for i, n in enumerate(np.bincount(best, minlength=len(self.predicted))):
            if n:
                self.predicted[i].inc(int(n))
        for p in probs[np.arange(len(probs)), best]:
            metrics.confidence.observe(float(p))
        if self.thresholds is not None:
            for name, values in monitoring.scores(probs).items():
                confident = int((values >= self.thresholds[name]).sum())
                if confident:
                    self.confident[name].inc(confident)


def _monitoring_gauges(card: ModelCard) -> dict[str, float] | None:
    """Thresholds and drift reference from model.json as gauges; every class's prediction counter (and the ATC
    counters) start at 0, so PromQL sees a class nobody has predicted yet as 0, not as missing."""
    for c in card.classes:
        metrics.predictions.labels(predicted=c).inc(0)
    if not card.monitoring:
        log.warning("model.json has no monitoring block (exported before it existed): no label-free accuracy "
                    "estimate or drift reference for %s %s", card.name, card.version)
        return None
    thresholds = card.monitoring["thresholds"]
    for name, value in thresholds.items():
        metrics.atc_threshold.labels(score=name).set(value)
        metrics.atc_confident.labels(score=name).inc(0)
    for c, share in card.monitoring["reference_shares"].items():
        metrics.reference_share.labels(predicted=c).set(share)
    return thresholds
