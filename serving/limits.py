"""ASGI middleware: checks on a request before BentoML parses it.

- A body over the byte limit: 413, without reading more of it than the limit.
- multipart/form-data without a boundary: 400 (starlette's form parser would raise KeyError: a 500).
"""
from __future__ import annotations

import json

from . import metrics


def missing_boundary(content_type: bytes) -> bool:
    media, _, params = content_type.decode("latin-1").partition(";")
    return media.strip().lower() == "multipart/form-data" and "boundary=" not in params.lower()


async def reject(send, status: int, reason: str, message: str) -> None:
    metrics.invalid_requests.labels(reason=reason).inc()
    body = json.dumps({"error": reason, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send, size_text: str) -> None:
        await reject(send, 413, "body_too_large",
                     f"request body {size_text} exceeds the limit of {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if missing_boundary(headers.get(b"content-type", b"")):
            return await reject(send, 400, "bad_content_type",
                                "Content-Type multipart/form-data needs a boundary parameter (let your HTTP client "
                                "build multipart bodies)")
        return await self._limited(scope, receive, send, headers)

    async def _limited(self, scope, receive, send, headers):
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send, f"of {int(length)} bytes")
        if length is not None:
            return await self.app(scope, receive, send)
        # Chunked upload with no length: buffer up to the limit, then replay it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send, "over")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
