"""The page at `/`: drop or choose a photo, see the top classes, the heatmap over the crop the model saw, the model's
version and a summary of its card. One static file (serving/static/index.html: no build step, nothing fetched from
elsewhere, so it works in a cluster without internet) that talks to /model_info and /explain like any client.

Mounted before BentoML's own index page (its Swagger UI at `/`; the OpenAPI document stays at /docs.json). A
Content-Security-Policy allows the page's own inline script and style (by hash) and nothing else: no other script
runs, and the page can reach only this service.
"""
from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PAGE = Path(__file__).parent / "static" / "index.html"


def _hashes(html: str, tag: str) -> str:
    """CSP source expressions for each inline <tag> block of the page."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def routes() -> Starlette:
    html = PAGE.read_text()
    policy = (f"default-src 'none'; script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
              "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    headers = {"content-security-policy": policy, "x-content-type-options": "nosniff", "cache-control": "no-cache"}

    async def index(request: Request) -> Response:
        return HTMLResponse(html, headers=headers)

    return Starlette(routes=[Route("/", index)])
