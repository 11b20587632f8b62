"""ASGI middleware: a request no route takes (404) or a method a route does not take (405) gets the service's JSON
error body, not starlette's plain-text "Not Found" / "Method Not Allowed".

A client of this service reads `{"error": reason, "message": ...}` from every refusal (the Open Inference
Protocol's `{"error": message}` under /v2/); before this, a typo in a path or a GET to /predict was the one answer
a client had to parse as text, and it did not say what to do. Only starlette's own plain-text 404 and 405 answers
are replaced: the routes' JSON 404s (an unknown model on /v2) pass as they are.
"""
from __future__ import annotations

from contract.errors import RequestError

from .errors import error_response

REPLACED = {404, 405}


def refusal(scope, status: int, allow: bytes | None) -> RequestError:
    """The path is not echoed (an error never repeats what the client sent: tests/serving/test_hostile.py); the
    method is one of the few the HTTP parser accepts."""
    method = scope.get("method", "?")
    if status == 405:
        methods = allow.decode("latin-1") if allow else "another method"
        return RequestError("method_not_allowed", f"this route does not take {method}; it takes {methods}", 405)
    return RequestError("not_found", f"no route here takes {method} at this path; the routes are in the OpenAPI "
                        "document at /docs.json (and the Open Inference Protocol's under /v2)", 404)


class JsonUnrouted:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        replaced: dict | None = None

        async def sending(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in REPLACED:
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    replaced = {"status": message["status"], "allow": headers.get(b"allow")}
                    return
            if replaced is None:
                return await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                await answer(scope, receive, send, replaced["status"], replaced["allow"])

        await self.app(scope, receive, sending)


async def answer(scope, receive, send, status: int, allow: bytes | None) -> None:
    protocol = "v2" if scope.get("path", "").startswith("/v2/") else "rest"
    response = error_response(refusal(scope, status, allow), protocol)
    if allow:
        response.headers["allow"] = allow.decode("latin-1")
    await response(scope, receive, send)
