"""ASGI middleware: checks on a request before BentoML parses it.

- A body over the byte limit: 413, without reading more of it than the limit.
- multipart/form-data without a boundary: 400 (starlette's form parser would raise KeyError: a 500).
- A body that has not fully arrived within body_timeout_seconds: 408. A slow upload otherwise ran into BentoML's
  request timeout (traffic.timeout, 60 s), answered 504 and counted as a server error.
"""
from __future__ import annotations

import asyncio
import logging

from contract.errors import RequestError

from .errors import error_response

log = logging.getLogger("bentoml.serving")


def missing_boundary(content_type: bytes) -> bool:
    media, _, params = content_type.decode("latin-1").partition(";")
    return media.strip().lower() == "multipart/form-data" and "boundary=" not in params.lower()


async def reject(send, status: int, reason: str, message: str) -> None:
    """A refusal before the app runs, in the REST error body (serving.errors), counted by reason."""
    response = error_response(RequestError(reason, message, status))
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class BodyDeadline:
    """receive() with a deadline for the body. Past it, the client gets a 408 and the app a disconnect; whatever the
    app still sends (or raises, reading a body that never came) is dropped. After the last body chunk, receive()
    passes through untimed: the app may wait on it for a disconnect."""

    def __init__(self, receive, send, seconds: float):
        self.inner_receive, self.inner_send = receive, send
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.body_done, self.timed_out, self.response_started = False, False, False

    async def receive(self):
        if self.timed_out:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self.inner_receive()
        try:
            message = await asyncio.wait_for(self.inner_receive(),
                                             max(0.0, self.deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            self.timed_out = True
            if not self.response_started:
                await reject(self.inner_send, 408, "body_timeout", "the request body did not arrive in time; send it "
                             "faster or in smaller requests")
            return {"type": "http.disconnect"}
        self.body_done = message["type"] != "http.request" or not message.get("more_body")
        return message

    async def send(self, message) -> None:
        if self.timed_out:
            return
        self.response_started = True
        await self.inner_send(message)


class RequestGuard:
    def __init__(self, app, max_bytes: int, body_timeout: float):
        self.app, self.max_bytes, self.body_timeout = app, max_bytes, body_timeout

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
        timed = BodyDeadline(receive, send, self.body_timeout)
        try:
            return await self._limited(scope, timed.receive, timed.send, headers)
        except Exception:
            if not timed.timed_out:
                raise
            log.info("request body timed out after %.0f s (answered 408)", self.body_timeout)

    async def _limited(self, scope, receive, send, headers):
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and (len(length) > 15 or int(length) > self.max_bytes):
            return await self._reject(send, f"of {length[:20].decode()} bytes")
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
