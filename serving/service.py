"""BentoML service: `bentoml serve serving.service:ImageClassifier`.

One service, one process per API worker: each worker holds the request core (serving.core), which decodes each
request's images on a bounded pool of threads, lets concurrent requests share one onnxruntime run (adaptive batches,
serving.coalesce) and counts the metrics. The endpoints below and the Open Inference Protocol routes (serving.v2)
only translate HTTP to the core and its errors to answers (serving.errors).
"""
from __future__ import annotations

import base64
import binascii
from typing import Annotated

import bentoml
from pydantic import ConfigDict, Field

from contract.card import MAX_CLASS_NAME_CHARS
from contract.errors import RequestError

from . import bentoml_adapter, page, v2
from .answers import Explanation, HeatmapFormat, HeatmapMethod, Prediction
from .artifact import pin_version
from .bentoml_adapter import Upload
from .core import Core, ImageFile
from .errors import error_response
from .heap import freeze_startup_objects
from .limits import RequestGuard
from .settings import load_settings
from .unrouted import JsonUnrouted

S = pin_version(load_settings())  # bentoml serve imports this module before it spawns the service's workers
CORE = Core(S)  # loaded in each worker (ImageClassifier.__init__); the routes of every protocol are bound to it


TopK = Annotated[int, Field(ge=1, le=S.max_top_k)]
ClassName = Annotated[str, Field(max_length=MAX_CLASS_NAME_CHARS)]


class Base64Request(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64-encoded image file (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    top_k: int = Field(3, ge=1, le=S.max_top_k)


class Base64BatchRequest(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, max_length=S.max_images_per_request)
    top_k: int = Field(3, ge=1, le=S.max_top_k)


class Base64ExplainRequest(Base64Request):
    label: ClassName | None = Field(None, description="a class to explain besides the top_k")
    format: HeatmapFormat = "grid"
    method: HeatmapMethod = "cam"


class Base64BatchExplainRequest(Base64BatchRequest):
    label: ClassName | None = Field(None, description="a class to explain besides the top_k")
    format: HeatmapFormat = "grid"
    method: HeatmapMethod = "cam"


class FeedbackRequest(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid")
    predicted: ClassName
    actual: ClassName


@bentoml.service(workers=S.api_workers, traffic={"timeout": 60}, logging={"access": {"enabled": S.access_log}})
class ImageClassifier:
    def __init__(self) -> None:
        CORE.load()
        freeze_startup_objects()  # the model, the framework: alive for good, so no full collection walks them

    def __is_ready__(self) -> bool:
        return CORE.ready()

    async def _predict(self, files: list[ImageFile], top_k: int):
        try:
            return await CORE.predict(files, top_k)
        except RequestError as exc:
            return error_response(exc)

    @bentoml.api(route="/predict")
    async def predict(self, image: Upload, top_k: TopK = 3) -> Prediction:
        """One image as a multipart file upload."""
        result = await self._predict([image], top_k)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self,
                            images: Annotated[list[Upload], Field(min_length=1, max_length=S.max_images_per_request)],
                            top_k: TopK = 3) -> list[Prediction]:
        """Several images as multipart file uploads, answered in order."""
        return await self._predict(images, top_k)

    @bentoml.api(route="/predict_base64", input_spec=Base64Request)
    async def predict_base64(self, image: str, top_k: int = 3) -> Prediction:
        """One base64-encoded image in a JSON body."""
        try:
            files = [_b64(image, "image")]
        except RequestError as exc:
            return error_response(exc)
        result = await self._predict(files, top_k)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/predict_base64_batch", input_spec=Base64BatchRequest)
    async def predict_base64_batch(self, images: list[str], top_k: int = 3) -> list[Prediction]:
        try:
            files = [_b64(b, f"images[{i}]") for i, b in enumerate(images)]
        except RequestError as exc:
            return error_response(exc)
        return await self._predict(files, top_k)

    async def _explain(self, files: list[ImageFile], top_k: int, label: str | None, fmt: HeatmapFormat,
                       method: HeatmapMethod):
        try:
            return await CORE.explain(files, top_k, label, fmt, method)
        except RequestError as exc:
            return error_response(exc)

    @bentoml.api(route="/explain")
    async def explain(self, image: Upload, top_k: TopK = 3, label: ClassName | None = None,
                      format: HeatmapFormat = "grid", method: HeatmapMethod = "cam") -> Explanation:
        """/predict's answer with a heatmap per returned class (and for `label`, when given): where in the picture
        the evidence for that class lies, as a grid of numbers or a PNG over the cropped input. method=cam: Grad-CAM
        of the served graph, free with the answer; method=occlusion: how far the probability falls with each cell
        hidden, one model run per cell (more faithful, see contract.occlusion; max_occlusion_images a request)."""
        result = await self._explain([image], top_k, label, format, method)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/explain_batch")
    async def explain_batch(self,
                            images: Annotated[list[Upload], Field(min_length=1, max_length=S.max_images_per_request)],
                            top_k: TopK = 3, label: ClassName | None = None,
                            format: HeatmapFormat = "grid", method: HeatmapMethod = "cam") -> list[Explanation]:
        return await self._explain(images, top_k, label, format, method)

    @bentoml.api(route="/explain_base64", input_spec=Base64ExplainRequest)
    async def explain_base64(self, image: str, top_k: int = 3, label: ClassName | None = None,
                             format: HeatmapFormat = "grid", method: HeatmapMethod = "cam") -> Explanation:
        try:
            files = [_b64(image, "image")]
        except RequestError as exc:
            return error_response(exc)
        result = await self._explain(files, top_k, label, format, method)
        return result[0] if isinstance(result, list) else result

    @bentoml.api(route="/explain_base64_batch", input_spec=Base64BatchExplainRequest)
    async def explain_base64_batch(self, images: list[str], top_k: int = 3, label: ClassName | None = None,
                                   format: HeatmapFormat = "grid", method: HeatmapMethod = "cam") -> list[Explanation]:
        try:
            files = [_b64(b, f"images[{i}]") for i, b in enumerate(images)]
        except RequestError as exc:
            return error_response(exc)
        return await self._explain(files, top_k, label, format, method)

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(self, predicted: str, actual: str) -> dict:
        """Ground truth for an earlier prediction; stateless, so any replica can take it."""
        try:
            return CORE.feedback(predicted, actual)
        except RequestError as exc:
            return error_response(exc)

    @bentoml.api(route="/model_info")
    def model_info(self) -> dict:
        """Classes, version, preprocessing, the offline test metrics of the loaded model, and which file serves
        (precision) and why."""
        try:
            return CORE.info()
        except RequestError as exc:
            return error_response(exc)


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("bad_base64", f"{field} is not valid base64") from None


ImageClassifier.add_asgi_middleware(JsonUnrouted)
ImageClassifier.add_asgi_middleware(RequestGuard, max_bytes=S.max_request_bytes, body_timeout=S.body_timeout_seconds)
ImageClassifier.mount_asgi_app(v2.routes(CORE), path="/")  # routes /v2/...; only paths it knows reach it
ImageClassifier.mount_asgi_app(page.routes(), path="/")  # the page at /, before BentoML's index
bentoml_adapter.install(S.upload_memory_bytes)
