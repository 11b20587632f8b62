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
from typing import Protocol

import anyio
import numpy as np

from contract.card import ArtifactError, ModelCard
from contract.errors import RequestError
from contract.occlusion import occluded, occlusion_maps
from contract.preprocess import PixelBudget, preprocess
from contract.scores import softmax

from . import loading, metrics
from .answers import (
    Explanation,
    HeatmapFormat,
    HeatmapMethod,
    Prediction,
    Served,
    answer,
    explanations,
    feedback,
    heatmap_classes,
)
from .coalesce import Coalescer
from .cpus import cpu_allotment
from .loading import Loaded
from .runtime import OnnxClassifier
from .settings import Settings

log = logging.getLogger("bentoml.serving")  # the logger bentoml serve shows at INFO


class Readable(Protocol):
    """An uploaded file, read where the HTTP layer left it (in memory or spooled), in a decoding thread."""

    def read_bytes(self) -> bytes: ...


ImageFile = bytes | Readable


class Core:
    """Built cheaply at import (the HTTP routes are bound to it then); `load()` opens the model in the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Loaded | None = None
        self.error: str | None = "not loaded yet"

    @property
    def card(self) -> ModelCard | None:
        return self.model.card if self.model is not None else None

    def load(self) -> None:
        """The pinned version's card and session; on any failure the core stays unready and says why."""
        s = self.settings
        try:
            self.model = loading.load(s)
        except (ArtifactError, OSError) as exc:
            self.error = str(exc)
        except Exception as exc:  # a model that does not match its card must not serve
            self.error = f"model.onnx rejected: {exc}"
        if self.model is None:
            log.error("model not loaded, service stays unready: %s", self.error)
            return
        self.error = None
        chosen = self.model.chosen
        self.series = metrics.ModelSeries(self.model.card, chosen.session.provider, chosen.precision,
                                          chosen.canary_passed)
        # decoding threads beyond the cores only share them: every request in the pool finishes late together
        # (12 MP photos at c = 32: p99 2.1x p50), where a queue served in arrival order keeps the tail short (1.3x)
        self.decoders = anyio.CapacityLimiter(s.decode_threads or cpu_allotment() or os.cpu_count() or 1)
        single = self.model.single_thread
        in_flight = self.model.lanes if single is not None else s.model_calls_in_flight
        self.runs = anyio.CapacityLimiter(in_flight)
        # run_mode adaptive: runs under load on one thread each, a lone request on all (serving.coalesce)
        self.coalescer = Coalescer(
            self._runner(single or self.model.session), s.max_batch_size, in_flight, max_wait=s.max_latency_ms / 1000,
            combine=s.batching, solo=self._runner(self.model.session) if single is not None else None)

    # ---- state -----------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """A model serves and the process is not draining (serving.run got SIGTERM and still serves)."""
        drain = self.settings.drain_file
        return self.model is not None and not (drain is not None and drain.exists())

    def check_loaded(self) -> None:
        if self.model is None:
            raise RequestError("model_unavailable", f"no model loaded: {self.error}", 503)

    def served(self) -> Served:
        if self.model is None:
            return Served(precision=None, provider=None, note=f"no model loaded: {self.error}")
        chosen = self.model.chosen
        return Served(precision=chosen.precision, provider=chosen.session.provider, note=chosen.note)

    def info(self) -> dict:
        """Classes, version, preprocessing, the offline test metrics and which file serves (precision) and why."""
        self.check_loaded()
        card = self.card
        test = card.metrics.test.model_dump() if card.metrics.test is not None else {}
        return {"name": card.name, "version": card.version, "classes": card.classes,
                "image_size": card.image_size, "resize_size": card.resize_size,
                "interpolation": card.interpolation, "served": self.served().model_dump(),
                "test_metrics": {k: test[k] for k in ("accuracy", "macro_f1", "roc_auc", "n") if k in test}}

    # ---- requests --------------------------------------------------------------------------------------------
    async def predict(self, files: list[ImageFile], top_k: int) -> list[Prediction]:
        return [answer(self.card, row, top_k) for row in await self.probabilities(files)]

    async def probabilities(self, files: list[ImageFile] | None, pixels: np.ndarray | None = None) -> np.ndarray:
        """Temperature-scaled probabilities [N,C] of image files, or of preprocessed uint8 [N,S,S,3] pixels (the Open
        Inference Protocol's `images` input); every prediction is counted in the metrics."""
        return (await self.outputs(files, pixels))[0]

    async def outputs(self, files: list[ImageFile] | None, pixels: np.ndarray | None = None,
                      maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities [N,C], heatmaps [N,M',h,w] and the classes mapped [N,M'] (M' >= M: read the first M) of
        files or pixels, with heatmaps of `maps` (int64 [N,M], see heatmap_classes) where given."""
        self.check_loaded()
        if maps is not None and maps.shape[1]:
            check_heatmaps(self.card, self.model.session)
        if pixels is None:
            pixels = await self._decode_all(files)
        return await self.coalescer.run(pixels, maps)

    async def explain(self, files: list[ImageFile], top_k: int, label: str | None = None,
                      fmt: HeatmapFormat = "grid", method: HeatmapMethod = "cam") -> list[Explanation]:
        """The answers of /predict, each with the heatmaps of its top_k classes (and of `label`, when asked)."""
        self.check_loaded()
        check_heatmaps(self.card, self.model.session)
        if method == "occlusion":
            check_occlusion(self.settings, len(files))
        asked = heatmap_classes(self.card.classes, top_k, label)
        if fmt == "png":
            check_pngs(self.settings, len(files), len(asked))
        pixels = await self._decode_all(files)
        probs, maps, mapped = await self.coalescer.run(pixels, np.tile(asked, (len(pixels), 1)))
        if method == "occlusion":
            maps = await occlusion(self.coalescer, self.decoders, pixels, probs, mapped[:, :len(asked)],
                                   maps.shape[2:])
        if fmt == "png":  # rendering is CPU work: in a decoding thread, off the event loop
            return await anyio.to_thread.run_sync(explanations, self.card, probs, maps, mapped, len(asked), top_k,
                                                  pixels, method, limiter=self.decoders)
        return explanations(self.card, probs, maps, mapped, len(asked), top_k, None, method)

    def feedback(self, predicted: str, actual: str) -> dict:
        """Ground truth for an earlier prediction; stateless, so any replica can take it."""
        self.check_loaded()
        return feedback(self.card, predicted, actual)

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
        with self.coalescer.decoding():
            arrays = [await anyio.to_thread.run_sync(self._prepare, f, budget, limiter=self.decoders) for f in files]
        return np.stack(arrays)

    def _runner(self, session: OnnxClassifier):
        async def run(batch: np.ndarray, maps: np.ndarray,
                      counted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """A Coalescer's call: one onnxruntime run in a worker thread (the event loop keeps answering)."""
            return await anyio.to_thread.run_sync(self._infer, session, batch, maps, counted, limiter=self.runs)
        return run

    def _infer(self, session: OnnxClassifier, batch: np.ndarray, maps: np.ndarray,
               counted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        pixels = np.ascontiguousarray(batch, dtype=np.uint8)
        if maps.shape[1]:  # only asked of a model with heatmaps (check_heatmaps)
            logits, heatmaps, mapped = session.explain(pixels, maps)
        else:
            logits = session.run(pixels)
            heatmaps, mapped = np.zeros((len(pixels), 0, 0, 0), np.float32), maps
        probs = softmax(logits, self.card.temperature)
        self.series.run(time.perf_counter() - start, probs, counted)
        return probs, heatmaps, mapped


def check_heatmaps(card: ModelCard, session: OnnxClassifier) -> None:
    if not session.heatmaps:
        raise RequestError("no_heatmaps", f"model {card.name} {card.version} was exported before heatmaps existed: its "
                           "graph cannot give them; export it again with this trainer (python -m training export "
                           "--checkpoint runs/<name>/final/model.pt) to explain its answers", 409)


def check_occlusion(settings: Settings, images: int) -> None:
    limit = settings.max_occlusion_images
    if images > limit:
        why = ("occlusion maps are turned off here (max_occlusion_images: 0)" if limit == 0 else
               f"{images} images ask for occlusion maps; at most {limit} may (max_occlusion_images): each costs one "
               "model run per heatmap cell")
        raise RequestError("too_many_images", f"{why}; send fewer images, or use method=cam", 413)


def check_pngs(settings: Settings, images: int, classes: int) -> None:
    limit = settings.max_heatmap_pngs
    if images * classes > limit:
        why = ("PNG heatmaps are turned off here (max_heatmap_pngs: 0)" if limit == 0 else
               f"{images} images x {classes} classes ask for {images * classes} PNG heatmaps; at most {limit} may "
               "(max_heatmap_pngs): each is rendered and sent")
        raise RequestError("too_many_heatmaps", f"{why}; ask fewer classes (top_k) or images a request, or use "
                           "format=grid", 413)


async def occlusion(coalescer: Coalescer, decoders: anyio.CapacityLimiter, pixels: np.ndarray, probs: np.ndarray,
                    classes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Occlusion maps [N, M, h, w] at the graph's heatmap grid: the hidden copies run through the coalescer like any
    request (batched with the others, bounded by max_latency_ms), not counted as predictions. One image's copies at
    a time: a request holds 49 copies (7 MB at 224 px), not 49 per image it sent."""
    maps = []
    for image, before, asked in zip(pixels, probs, classes):
        hidden = await anyio.to_thread.run_sync(occluded, image, grid, limiter=decoders)  # megabytes: off the loop
        after = (await coalescer.run(hidden, counted=False))[0]
        maps.append(occlusion_maps(before[None], after, asked[None], grid)[0])
    return np.stack(maps)
