"""The Open Inference Protocol's REST routes (KServe V2 / Triton), mounted on ImageClassifier beside /predict.

`routes(core)` binds them to the process's request core (serving.core), the one /predict uses: the same decoding and
checks, the same shared onnxruntime runs (V2 and /predict requests share batches), the same metrics. BentoML's
request metrics and the RequestGuard middleware wrap the whole app, these routes included. The wire format is
serving.oip; error bodies are serving.errors' (protocol "v2").
"""
from __future__ import annotations

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.errors import RequestError

from . import oip
from .core import Core
from .errors import error_response

SERVER = {"name": "imgcls", "version": "2", "extensions": ["binary_tensor_data", "classification"]}


class V2Routes:
    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def model_name(self) -> str | None:
        """The model's name on these routes: v2_model_name, else model.json's."""
        card = self.core.card
        return self.core.settings.v2_model_name or (card.name if card is not None else None)

    def check_model(self, request: Request) -> None:
        """The URL must name the loaded model (and its version, when given): else the protocol's 404 (503 while no
        model is loaded)."""
        self.core.check_loaded()
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != self.model_name:
            raise RequestError("unknown_model", f"unknown model '{name}'; this server serves '{self.model_name}'",
                               404)
        if version is not None and version != self.core.card.version:
            raise RequestError("unknown_model", f"unknown version '{version}' of model '{name}'; it serves version "
                               f"{self.core.card.version}", 404)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(SERVER)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        ready = self.core.ready()  # the same as /readyz: a model serves here and the process is not draining
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        ready = self.core.ready()
        body = {"name": self.model_name, "ready": ready}
        if ready:  # which file serves and why (an int8 variant that failed its canary on this node serves fp32)
            served = self.core.served()
            body |= {"precision": served.precision, "precision_note": served.note}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        card = self.core.card
        s, c = card.image_size, len(card.classes)
        return JSONResponse({
            "name": self.model_name, "versions": [card.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": oip.IMAGE_FILES, "datatype": "BYTES", "shape": [-1]},
                       {"name": oip.PIXELS, "datatype": "UINT8", "shape": [-1, s, s, 3]}],
            "outputs": [{"name": oip.PROBABILITIES, "datatype": "FP32", "shape": [-1, c]},
                        {"name": oip.LABELS, "datatype": "BYTES", "shape": [-1, -1]},
                        *self.heatmap_outputs()],
            "parameters": {"classes": ",".join(card.classes)}})

    def heatmap_outputs(self) -> list[dict]:
        """The optional outputs, where the served graph has heatmaps: the maps of the top `top_k` classes (a
        parameter of the output or the request; 1 by default) and the classes they map."""
        if not self.core.model.session.heatmaps:
            return []
        return [{"name": oip.HEATMAPS, "datatype": "FP32", "shape": [-1, -1, -1, -1]},
                {"name": oip.HEATMAP_LABELS, "datatype": "BYTES", "shape": [-1, -1]}]

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        s, card = self.core.settings, self.core.card
        req = oip.parse_infer(await request.body(), request.headers.get(oip.HEADER_LENGTH),
                              max_images=s.max_images_per_request, image_size=card.image_size)
        k = oip.heatmap_count(req, s.max_top_k)
        n = len(req.files) if req.files is not None else len(req.pixels)
        maps = np.tile(-np.arange(1, min(k, len(card.classes)) + 1), (n, 1)) if k else None
        probs, heatmaps, mapped = await self.core.outputs(req.files, req.pixels, maps)
        outputs = oip.build_outputs(req, probs, card.classes, s.max_top_k, heatmaps, mapped)
        body, headers = oip.encode_response(self.model_name, card.version, req.id, outputs)
        return Response(body, headers=headers)


def _answering_errors(handler):
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return error_response(exc, "v2")
    return route


def routes(core: Core) -> Starlette:
    """The V2 routes of `core`, as an ASGI app to mount at / (only the paths it knows reach it)."""
    v2 = V2Routes(core)

    def model_routes(prefix: str) -> list[Route]:
        return [Route(prefix, _answering_errors(v2.model_metadata)),
                Route(prefix + "/ready", _answering_errors(v2.model_ready)),
                Route(prefix + "/infer", _answering_errors(v2.infer), methods=["POST"])]

    return Starlette(routes=[
        Route("/v2", v2.server_metadata), Route("/v2/", v2.server_metadata),
        Route("/v2/health/live", v2.live), Route("/v2/health/ready", v2.server_ready),
        *model_routes("/v2/models/{name}"), *model_routes("/v2/models/{name}/versions/{version}"),
    ])
