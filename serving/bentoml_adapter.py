"""Everything the service changes inside BentoML (and starlette under it), in one place, for BentoML 1.4.39 only.

The rest of `serving/` uses BentoML's public API (`bentoml.service`, `bentoml.api`, `add_asgi_middleware`,
`mount_asgi_app`, `bentoml.metrics`). What has no public hook is here, and only here are BentoML's private modules
imported. Importing this module with any other BentoML stops with one line naming it: each change below was read
against that version's code, and tests/serving/test_bentoml_adapter.py fails when the code it changes is no longer
the code it was written for (a source digest per patched function) or no longer behaves as assumed.

1. `Upload`, the predict endpoints' file field: the upload is read where starlette's parser left it. BentoML's `Path`
   fields copy every upload into a temporary file on the event loop and delete it after the answer (mkstemp, write,
   unlink, rmdir: 9 % of the HTTP-facing process's CPU, bench/profile_serve.py). A PurePath subclass, so that
   BentoML still parses the field as a file part and documents it as binary in its OpenAPI spec.
2. Multipart parsing hardened where fuzzing found it wanting: a text value in a file field (BentoML downloads it as
   a URL: a request from the server to wherever the client says) is a 400; a malformed body (starlette's
   HTTPException(400), which BentoML turned into a 500) is a 400; a field the endpoint does not have, or a value JSON
   cannot read (not UTF-8, an integer past Python's digit limit: 500s in BentoML) is a 400 naming the fields.
3. Uploads in memory up to `upload_memory_bytes` (starlette's spool limit, 1 MB, has no setting): past it every
   64 KB chunk of a phone photo went to disk through a thread hop from the event loop.
4. An answer's media type worked out once per output type: BentoML builds a pydantic TypeAdapter and a JSON schema
   of the output type for every response (IOMixin.mime_type; 15 % of an event loop under load).
5. The middleware stack BentoML builds: its OpenTelemetry middleware only while tracing samples (at the default
   sample rate 0 it records nothing yet costs 0.3 core-ms per image), and its request metrics labelled by the route's
   template (/v2/models/{name}/infer) instead of the raw path, so clients cannot add series to /metrics (3,000 unknown
   paths grew it from 385 KB to 26 MB).
"""
from __future__ import annotations

import functools
from pathlib import PurePosixPath
from typing import Any, BinaryIO

import bentoml

BENTOML_VERSION = "1.4.39"
if bentoml.__version__ != BENTOML_VERSION:
    raise ImportError(f"serving/bentoml_adapter.py changes BentoML {BENTOML_VERSION}'s internals and this is BentoML "
                      f"{bentoml.__version__}: install bentoml=={BENTOML_VERSION}, or port that module")

from _bentoml_impl.serde import MultipartSerde  # noqa: E402 (only once the version is known)
from _bentoml_impl.server.app import ServiceAppFactory  # noqa: E402
from _bentoml_sdk.io_models import IOMixin  # noqa: E402
from bentoml._internal.configuration.containers import BentoMLContainer  # noqa: E402
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware  # noqa: E402
from bentoml.exceptions import BadInput  # noqa: E402
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from pydantic_core import PydanticCustomError, core_schema  # noqa: E402
from starlette.datastructures import UploadFile  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.formparsers import MultiPartParser  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

# what each change replaces, as BentoML 1.4.39 has it (the test compares their source digests)
ORIGINALS = {
    "MultipartSerde.parse_request": MultipartSerde.parse_request,
    "MultipartSerde.ensure_file": MultipartSerde.ensure_file,
    "IOMixin.mime_type": IOMixin.mime_type.__func__,
    "ServiceAppFactory.middlewares": ServiceAppFactory.middlewares.fget,
    "RunnerTrafficMetricsMiddleware.__call__": RunnerTrafficMetricsMiddleware.__call__,
}


# ---- 1. Upload -------------------------------------------------------------------------------------------------
class Upload(PurePosixPath):
    """A multipart file upload, read where it lies: in memory, or past `upload_memory_bytes` in starlette's spool
    file; named after the client's filename."""

    file: BinaryIO

    def read_bytes(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls._validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        # what BentoML's own file fields say (validation mode): its client and OpenAPI spec send these as parts
        return {"type": "file", "format": "binary"} if handler.mode == "validation" else {"type": "string",
                                                                                          "format": "binary"}

    @classmethod
    def _validate(cls, value: Any) -> Upload:
        if isinstance(value, Upload):
            return value
        if isinstance(value, UploadFile):
            upload = cls(value.filename or "upload")
            upload.file = value.file
            return upload
        raise PydanticCustomError("upload_type", "expected a file upload (a multipart part with a filename)")


# ---- 2. multipart parsing --------------------------------------------------------------------------------------
async def _uploads_only(value):
    if isinstance(value, UploadFile):
        return value
    raise BadInput("image fields must be file uploads (multipart parts with a filename), not text or URLs; "
                   "for base64 use /predict_base64")


async def _parse_or_400(self, request, cls):
    try:
        form = await request.form()  # starlette keeps the parsed form on the request: BentoML's parse reuses it
        unknown = sorted(set(form) - set(cls.model_fields))
        if unknown:
            raise BadInput(f"unknown form field(s) {unknown}; this endpoint takes {sorted(cls.model_fields)}")
        return await ORIGINALS["MultipartSerde.parse_request"](self, request, cls)
    except HTTPException as exc:
        raise BadInput(f"malformed multipart/form-data body: {exc.detail}") from None
    except ValidationError:
        raise  # BentoML answers it with 400 and the field errors
    except ValueError as exc:  # json.loads of a field's value: not UTF-8, or an integer past Python's digit limit
        raise BadInput(f"a form field's value cannot be read: {str(exc)[:200]}") from None


# ---- 3. uploads in memory --------------------------------------------------------------------------------------
def keep_uploads_in_memory(limit: int) -> None:
    """Uploads of up to `limit` bytes stay in memory (0: no limit). Memory stays bounded: a body past
    max_request_bytes is refused (413) before it is read further (serving.limits)."""
    MultiPartParser.spool_max_size = limit


# ---- 4. media types --------------------------------------------------------------------------------------------
def _cache_media_types() -> None:
    if not hasattr(IOMixin.mime_type, "cache_info"):
        IOMixin.mime_type = classmethod(functools.cache(ORIGINALS["IOMixin.mime_type"]))


# ---- 5. the middleware stack -----------------------------------------------------------------------------------
UNMATCHED = "unmatched"
_ORIGINAL_SCOPE = "imgcls.original_scope"


def tracing_on() -> bool:
    return bool(BentoMLContainer.tracing.sample_rate.get())


def route_label(routes: list, path: str) -> str:
    """The template of the route that serves `path` (`/v2/models/{name}`), `unmatched` where none does."""
    for route in routes:
        if isinstance(route, Mount) and (match := route.path_regex.match(path)):
            if not route.routes:  # a mounted app without routes (static files): its files under one label
                return route.path_format
            inner = route_label(route.routes, "/" + match.group("path").lstrip("/"))
            if inner != UNMATCHED:
                return route.path.rstrip("/") + inner
        elif isinstance(route, Route) and route.path_regex.match(path):
            return route.path_format
    return UNMATCHED


class RouteLabelledMetrics(RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics (names, labels, buckets, in-progress gauge all its own), but with the route template
    as the `endpoint` label. BentoML's middleware reads scope["path"] for its label and passes its scope on: it gets
    a copy whose path is the label, and the app behind it gets the request's own scope back."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(self._restore_scope, **kwargs)
        self.inner = app
        self.exact: set[str] = set()

    async def _restore_scope(self, scope, receive, send) -> None:
        await self.inner(scope.get(_ORIGINAL_SCOPE, scope), receive, send)

    def label(self, scope) -> str:
        path = scope.get("path", "")
        if path in self.exact or path == "/metrics":
            return path
        label = route_label(getattr(scope.get("app"), "routes", []), path)
        if label == path:
            self.exact.add(path)  # a route without parameters: bounded by the app's routes
        return label

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        label = self.label(scope)
        if label == scope.get("path"):
            return await super().__call__(scope, receive, send)
        await super().__call__(dict(scope, path=label, **{_ORIGINAL_SCOPE: scope}), receive, send)


def edited_stack(stack: list[Middleware]) -> list[Middleware]:
    out = []
    for m in stack:
        if m.cls is OpenTelemetryMiddleware and not tracing_on():
            continue
        if m.cls is RunnerTrafficMetricsMiddleware:
            m = Middleware(RouteLabelledMetrics, *m.args, **m.kwargs)
        out.append(m)
    return out


def _stack(self) -> list[Middleware]:
    return edited_stack(ORIGINALS["ServiceAppFactory.middlewares"](self))


# ---- applying them ---------------------------------------------------------------------------------------------
def install(upload_memory_bytes: int) -> None:
    """Every change above, before `bentoml serve` builds the services' apps (idempotent)."""
    MultipartSerde.ensure_file = staticmethod(_uploads_only)
    MultipartSerde.parse_request = _parse_or_400
    keep_uploads_in_memory(upload_memory_bytes)
    _cache_media_types()
    ServiceAppFactory.middlewares = property(_stack)
