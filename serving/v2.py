"""The Open Inference Protocol's REST routes (KServe V2 / Triton), mounted on ImageClassifier beside /predict.

The handlers run in ImageClassifier's worker and call the same methods as /predict: the same decoding and checks,
the same batched Model.infer (so V2 and /predict requests share batches), the same metrics. BentoML's request
metrics and the RequestGuard middleware wrap the whole app, these routes included. The wire format is serving.oip.
"""
from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.preprocess import ImageError

from . import metrics, oip

SERVER = {"name": "imgcls", "version": "2", "extensions": ["binary_tensor_data", "classification"]}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _rejected(reason: str, status: int, message: str) -> JSONResponse:
    metrics.invalid_requests.labels(reason=reason).inc()
    return error(status, message)


def _service():
    return bentoml.get_current_service()


def _model_or_error(request: Request):
    """The service if the URL names the loaded model (and its version, when given); else the protocol's 404/503."""
    svc = _service()
    if svc.card is None:
        return None, error(503, f"no model loaded: {svc.error}")
    name, version = request.path_params["name"], request.path_params.get("version")
    if name != svc.v2_name:
        return None, error(404, f"unknown model '{name}'; this server serves '{svc.v2_name}'")
    if version is not None and version != svc.card.version:
        return None, error(404, f"unknown version '{version}' of model '{name}'; it serves version "
                                f"{svc.card.version}")
    return svc, None


async def server_metadata(request: Request) -> Response:
    return JSONResponse(SERVER)


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def _ready(svc) -> bool:
    # the same as /readyz: this worker's model card and drain state, then the Model service's own readiness
    return svc.__is_ready__() and await svc.model.is_ready(5)


async def server_ready(request: Request) -> Response:
    ready = await _ready(_service())
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def model_ready(request: Request) -> Response:
    svc, err = _model_or_error(request)
    if err is not None:
        return err
    ready = await _ready(svc)
    body = {"name": svc.v2_name, "ready": ready}
    if ready:  # which file serves and why (an int8 variant that failed its canary on this node serves fp32)
        served = await svc.model.to_async.served()
        body |= {"precision": served["precision"], "precision_note": served["note"]}
    return JSONResponse(body, status_code=200 if ready else 503)


async def model_metadata(request: Request) -> Response:
    svc, err = _model_or_error(request)
    if err is not None:
        return err
    s, c = svc.card.image_size, len(svc.card.classes)
    return JSONResponse({
        "name": svc.v2_name, "versions": [svc.card.version], "platform": "onnxruntime_onnx",
        "inputs": [{"name": oip.IMAGE_FILES, "datatype": "BYTES", "shape": [-1]},
                   {"name": oip.PIXELS, "datatype": "UINT8", "shape": [-1, s, s, 3]}],
        "outputs": [{"name": oip.PROBABILITIES, "datatype": "FP32", "shape": [-1, c]},
                    {"name": oip.LABELS, "datatype": "BYTES", "shape": [-1, -1]}],
        "parameters": {"classes": ",".join(svc.card.classes)}})


async def infer(request: Request) -> Response:
    svc, err = _model_or_error(request)
    if err is not None:
        return err
    try:
        req = oip.parse_infer(await request.body(), request.headers.get(oip.HEADER_LENGTH),
                              max_images=svc.settings.max_images_per_request, image_size=svc.card.image_size)
        probs = await svc.probabilities_of(req.files, req.pixels)
        outputs = oip.build_outputs(req, probs, svc.card.classes, svc.settings.max_top_k)
    except oip.ProtocolError as exc:
        return _rejected(exc.reason, exc.status, str(exc))
    except ImageError as exc:  # the protocol knows one status for a bad request; an over-limit image stays a 413
        return _rejected(exc.reason, 413 if exc.status == 413 else 400, str(exc))
    except bentoml.exceptions.ServiceUnavailable as exc:
        return error(503, str(exc))
    body, headers = oip.encode_response(svc.v2_name, svc.card.version, req.id, outputs)
    return Response(body, headers=headers)


def _model_routes(prefix: str) -> list[Route]:
    return [Route(prefix, model_metadata), Route(prefix + "/ready", model_ready),
            Route(prefix + "/infer", infer, methods=["POST"])]


app = Starlette(routes=[
    Route("/v2", server_metadata), Route("/v2/", server_metadata),
    Route("/v2/health/live", live), Route("/v2/health/ready", server_ready),
    *_model_routes("/v2/models/{name}"), *_model_routes("/v2/models/{name}/versions/{version}"),
])
