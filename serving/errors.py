"""One error-body builder for every protocol: a `RequestError` becomes the answer its protocol expects.

/predict* and the other REST endpoints answer `{"error": reason, "message": ...}` with the error's own status. The
Open Inference Protocol answers `{"error": message}` and knows one status for a bad request: a 4xx other than an
unknown model (404) or an over-limit body or image (413) is a 400 there. A refused request (4xx) is counted by reason.
"""
from __future__ import annotations

from typing import Literal

from starlette.responses import JSONResponse

from contract.errors import RequestError

from . import metrics

Protocol = Literal["rest", "v2"]


V2_STATUSES = {400, 404, 413, 503}  # what the protocol's clients (tritonclient, KServe's) know how to read


def status_of(exc: RequestError, protocol: Protocol) -> int:
    if protocol == "v2" and exc.status not in V2_STATUSES and exc.status < 500:
        return 400
    return exc.status


def body_of(exc: RequestError, protocol: Protocol) -> dict:
    if protocol == "v2":
        return {"error": str(exc)}
    return {"error": exc.reason, "message": str(exc)}


def error_response(exc: RequestError, protocol: Protocol = "rest") -> JSONResponse:
    """The answer to a request refused with `exc` (BentoML replaces the message of any 5xx it raises itself with a
    generic one, so 503s are answered here too, with the reason)."""
    if exc.status < 500:
        metrics.invalid_requests.labels(reason=exc.reason).inc()
    return JSONResponse(body_of(exc, protocol), status_code=status_of(exc, protocol))
