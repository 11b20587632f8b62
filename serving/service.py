"""BentoML service: `bentoml serve serving.service:ImageClassifier`.

Two services, as BentoML's adaptive batching wants them: ImageClassifier (HTTP-facing) decodes and preprocesses
each request on its own, then calls Model.infer, a batchable API, through a Coalescer (the images of requests that
arrive while earlier calls are in flight share one call); BentoML's dispatcher stacks concurrent calls into one
onnxruntime run, bounded by max_batch_size and max_latency_ms.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from contract import monitoring
from contract.card import ArtifactError, ModelCard, load_card
from contract.precision import Chosen, choose
from contract.preprocess import ImageError, PixelBudget, preprocess
from contract.publish import resolve
from contract.scores import softmax

from . import dispatch, media_types, metrics, multipart, stack, v2
from .artifact import pin_version
from .coalesce import Coalescer
from .cpus import cpu_allotment
from .limits import RequestGuard
from .multipart import Upload
from .runtime import OnnxClassifier, cuda_available
from .settings import load_settings

log = logging.getLogger("bentoml.serving")
S = pin_version(load_settings())  # bentoml serve imports this module before it spawns the services' workers


def _load_card() -> tuple[ModelCard | None, Path | None, str | None]:
    try:
        version_dir = resolve(S.model_dir, S.artifacts_root, S.model_name)
        return load_card(version_dir, verify=S.verify_sha256), version_dir, None
    except (ArtifactError, OSError) as exc:
        log.error("model not loaded, service stays unready: %s", exc)
        return None, None, str(exc)


# runner_connection: BentoML 1.4's client to this service replaces its aiohttp session every 100 requests / 300 s by
# closing the old one while concurrent calls still use it ("Connector is closed", ServerDisconnectedError: 500s under
# load, found by bench/soak.py). The connection is a local socket that never needs refreshing: keep one session.
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": S.access_log}},
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9})
class Model:
    """Owns the onnxruntime session; its one API takes uint8 [N,S,S,3] and returns logits [N,C]."""

    def __init__(self) -> None:
        self.card, version_dir, self.error = _load_card()
        self.clf = None
        if self.card is None:
            return
        try:
            self.clf = self._session(version_dir)
        except Exception as exc:  # a model that does not match its card must not serve
            self.error = f"model.onnx rejected: {exc}"
            log.error("model not loaded, service stays unready: %s", self.error)
            return
        metrics.model_info.labels(name=self.card.name, version=self.card.version, provider=self.clf.provider,
                                  precision=self.chosen.precision).set(1)
        if self.card.test_accuracy is not None:
            metrics.offline_accuracy.labels(name=self.card.name, version=self.card.version).set(
                self.card.test_accuracy)

    def _session(self, version_dir: Path) -> OnnxClassifier:
        """The file `precision` picks (contract.precision: int8 on CPU where it passes the canary check here, fp16
        on CUDA, else fp32); each session runs a warm-up probe as it opens."""
        def open_session(path: Path) -> OnnxClassifier:
            return OnnxClassifier(path, len(self.card.classes), self.card.image_size, S.device, S.intra_op_threads,
                                  S.inter_op_threads, S.spinning)

        def pick(on_cuda: bool) -> Chosen:
            return choose(version_dir, self.card, S.precision, on_cuda, open_session, lambda clf, x: clf.run(x),
                          S.verify_sha256)

        chosen = pick(S.device != "cpu" and cuda_available())
        if chosen.precision == "fp16" and S.precision == "auto" and chosen.session.provider != "CUDAExecutionProvider":
            chosen = pick(False)  # CUDA did not load: fp16 on CPU is slow
        (log.warning if chosen.canary_passed is False else log.info)(
            "serving %s on %s: %s", chosen.path.name, chosen.session.provider, chosen.note)
        self.chosen = chosen
        if chosen.canary_passed is not None:
            metrics.int8_canary.labels(name=self.card.name, version=self.card.version).set(chosen.canary_passed)
        return chosen.session

    def __is_ready__(self) -> bool:
        return self.clf is not None

    @bentoml.api
    def served(self) -> dict:
        """Which file serves and why (precision, execution provider): for /model_info."""
        if self.clf is None:
            return {"precision": None, "provider": None, "note": f"no model loaded: {self.error}"}
        return {"precision": self.chosen.precision, "provider": self.clf.provider, "note": self.chosen.note}

    @bentoml.api(batchable=S.batching, max_batch_size=S.max_batch_size, max_latency_ms=S.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.clf is None:
            raise bentoml.exceptions.ServiceUnavailable(f"no model loaded: {self.error}")
        start = time.perf_counter()
        logits = self.clf.run(np.ascontiguousarray(images, dtype=np.uint8))
        metrics.inference_seconds.labels(provider=self.clf.provider).observe(time.perf_counter() - start)
        metrics.batch_size.observe(len(images))
        return logits


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    confidence: float
    top_k: list[Label]
    model: str
    version: str


class Base64Request(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64-encoded image file (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    top_k: int = Field(3, ge=1, le=S.max_top_k)


class Base64BatchRequest(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, max_length=S.max_images_per_request)
    top_k: int = Field(3, ge=1, le=S.max_top_k)


class FeedbackRequest(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    predicted: str
    actual: str


TopK = Annotated[int, Field(ge=1, le=S.max_top_k)]


def unavailable(message: str) -> JSONResponse:
    """503 with the reason in the body (BentoML replaces the message of any 5xx it raises with a generic one)."""
    return JSONResponse({"error": "model_unavailable", "message": message}, status_code=503)


def error_response(exc: ImageError) -> JSONResponse:
    metrics.invalid_requests.labels(reason=exc.reason).inc()
    return JSONResponse({"error": exc.reason, "message": str(exc)}, status_code=exc.status)


@bentoml.service(workers=S.api_workers, traffic={"timeout": 60}, logging={"access": {"enabled": S.access_log}})
class ImageClassifier:
    model = bentoml.depends(Model)

    def __init__(self) -> None:
        self.settings = S
        self.card, _, self.error = _load_card()
        self.thresholds = _monitoring_gauges(self.card) if self.card is not None else None
        self.v2_name = S.v2_model_name or (self.card.name if self.card is not None else None)
        self.coalescer = Coalescer(self._probabilities, S.max_batch_size, S.model_calls_in_flight)
        if self.card is not None:  # the labelled series, looked up once (a lookup takes a lock and a dict)
            self.predicted = [metrics.predictions.labels(predicted=c) for c in self.card.classes]
            self.confident = {name: metrics.atc_confident.labels(score=name) for name in self.thresholds or {}}
        # decoding threads beyond the cores only share them: every request in the pool finishes late together
        # (12 MP photos at c = 32: p99 2.1x p50), where a queue served in arrival order keeps the tail short (1.3x)
        self.decoders = anyio.CapacityLimiter(S.decode_threads or cpu_allotment() or os.cpu_count() or 1)

    def __is_ready__(self) -> bool:
        # BentoML's probe also waits for Model.__is_ready__; draining: serving.run got SIGTERM (still serving)
        return self.card is not None and not (S.drain_file is not None and S.drain_file.exists())

    # ---- the work shared by every predict endpoint -------------------------------------------------------------
    def _prepare(self, data: bytes | Upload, budget: PixelBudget) -> np.ndarray:
        """An image file's pixels; an upload is read here, in the decoding thread, so a phone photo's megabytes are
        not copied on the event loop that every other request waits on."""
        if isinstance(data, Upload):
            data = data.read_bytes()
        start = time.perf_counter()
        array = preprocess(data, self.card.spec, S.max_image_pixels, budget)
        metrics.preprocess_seconds.observe(time.perf_counter() - start)
        return array

    async def _decode_all(self, blobs: list[bytes | Upload]) -> np.ndarray:
        """The images of a request, decoded one at a time: each waits for a decoding thread on its own, in arrival
        order, so a 64-image request holds at most one thread and a single photo arriving behind it waits for the
        images decoding now, not for the whole request (issue 27: 37 s behind two 64-PNG requests before). The
        request's decoded pixels are bounded as a whole by max_request_pixels."""
        budget = PixelBudget(S.max_request_pixels)
        arrays = [await anyio.to_thread.run_sync(self._prepare, blob, budget, limiter=self.decoders)
                  for blob in blobs]
        return np.stack(arrays)

    async def probabilities_of(self, blobs: list[bytes | Upload] | None,
                               pixels: np.ndarray | None = None) -> np.ndarray:
        """Temperature-scaled probabilities [N,C] of encoded image files (bytes or uploads), or of preprocessed uint8
        [N,S,S,3] pixels (the Open Inference Protocol's `images` input); every prediction is counted in the metrics."""
        if self.card is None:
            raise bentoml.exceptions.ServiceUnavailable(f"no model loaded: {self.error}")
        if pixels is None:
            pixels = await self._decode_all(blobs)
        return await self.coalescer.run(pixels)

    async def _predict(self, blobs: list[bytes | Upload], top_k: int) -> list[Prediction]:
        return [self._answer(row, top_k) for row in await self.probabilities_of(blobs)]

    def _count(self, probs: np.ndarray) -> None:
        """The metrics of a Model call's predictions, counted once per call rather than per request."""
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

    async def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The Coalescer's call: temperature-scaled probabilities of one Model call's images, counted."""
        probs = softmax(await self._infer(batch), self.card.temperature)
        self._count(probs)
        return probs

    async def _infer(self, batch: np.ndarray, attempts: int = 3) -> np.ndarray:
        """Model.infer over BentoML's pooled connection. A dropped connection (ServerDisconnectedError; frequent
        before the runner_connection fix above, kept as a safeguard) is retried: inference is idempotent."""
        for attempt in range(attempts):
            try:
                return await self.model.to_async.infer(batch)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                log.warning("model service connection dropped (%s), attempt %d/%d", exc, attempt + 1, attempts)
            except bentoml.exceptions.ServiceUnavailable:  # BentoML hides the Model service's own message
                raise bentoml.exceptions.ServiceUnavailable(
                    "the model service answered 503: over its latency budget (max_latency_ms; retry later) or no "
                    "model loaded (its log says why; /readyz is then 503)") from None
        raise bentoml.exceptions.ServiceUnavailable("the model service keeps dropping connections; retry later")

    def _answer(self, probs: np.ndarray, top_k: int) -> Prediction:
        classes = self.card.classes
        order = np.argsort(-probs, kind="stable")[:min(top_k, len(classes))]
        best = classes[order[0]]
        return Prediction(label=best, confidence=float(probs[order[0]]), model=self.card.name,
                          version=self.card.version,
                          top_k=[Label(label=classes[i], probability=float(probs[i])) for i in order])

    async def _guarded(self, blobs: list[bytes | Upload], top_k: int):
        try:
            return await self._predict(blobs, top_k)
        except ImageError as exc:
            return error_response(exc)
        except bentoml.exceptions.ServiceUnavailable as exc:
            return unavailable(str(exc))

    # ---- endpoints ---------------------------------------------------------------------------------------------
    @bentoml.api(route="/predict")
    async def predict(self, image: Upload, top_k: TopK = 3) -> Prediction:
        """One image as a multipart file upload."""
        result = await self._guarded([image], top_k)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self,
                            images: Annotated[list[Upload], Field(min_length=1, max_length=S.max_images_per_request)],
                            top_k: TopK = 3) -> list[Prediction]:
        """Several images as multipart file uploads, answered in order."""
        return await self._guarded(images, top_k)

    @bentoml.api(route="/predict_base64", input_spec=Base64Request)
    async def predict_base64(self, image: str, top_k: int = 3) -> Prediction:
        """One base64-encoded image in a JSON body."""
        try:
            blobs = [_b64(image, "image")]
        except ImageError as exc:
            return error_response(exc)
        result = await self._guarded(blobs, top_k)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/predict_base64_batch", input_spec=Base64BatchRequest)
    async def predict_base64_batch(self, images: list[str], top_k: int = 3) -> list[Prediction]:
        try:
            blobs = [_b64(b, f"images[{i}]") for i, b in enumerate(images)]
        except ImageError as exc:
            return error_response(exc)
        return await self._guarded(blobs, top_k)

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(self, predicted: str, actual: str) -> dict:
        """Ground truth for an earlier prediction; stateless, so any replica can take it."""
        if self.card is None:
            return unavailable(f"no model loaded: {self.error}")
        unknown = [f"{k}='{v}'" for k, v in (("predicted", predicted), ("actual", actual))
                   if v not in self.card.classes]
        if unknown:
            return error_response(ImageError("unknown_class", f"unknown class {', '.join(unknown)}; the model's "
                                             f"classes are {self.card.classes}", 422))
        outcome = "correct" if predicted == actual else "incorrect"
        metrics.feedback.labels(outcome=outcome, actual=actual).inc()
        return {"outcome": outcome}

    @bentoml.api(route="/model_info")
    async def model_info(self) -> dict:
        """Classes, version, preprocessing, the offline test metrics of the loaded model, and which file serves
        (precision) and why."""
        if self.card is None:
            return unavailable(f"no model loaded: {self.error}")
        test = self.card.metrics.get("test", {})
        try:
            served = await self.model.to_async.served()
        except bentoml.exceptions.BentoMLException as exc:
            served = {"precision": None, "provider": None, "note": f"the model service did not answer: {exc}"}
        return {"name": self.card.name, "version": self.card.version, "classes": self.card.classes,
                "image_size": self.card.image_size, "resize_size": self.card.resize_size,
                "interpolation": self.card.interpolation, "served": served,
                "test_metrics": {k: test[k] for k in ("accuracy", "macro_f1", "roc_auc", "n") if k in test}}


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


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("bad_base64", f"{field} is not valid base64") from None


ImageClassifier.add_asgi_middleware(RequestGuard, max_bytes=S.max_request_bytes, body_timeout=S.body_timeout_seconds)
ImageClassifier.mount_asgi_app(v2.app, path="/")  # routes /v2/...; only paths it knows reach it

multipart.harden()
multipart.keep_uploads_in_memory(S.upload_memory_bytes)
stack.edit_middleware_stack()
dispatch.wait_instead_of_polling()
media_types.cache_per_type()
