"""BentoML's ASGI middleware stack, edited in one place (BentoML 1.4.39, pinned in pyproject; refused otherwise).

Two edits to the list `ServiceAppFactory.middlewares` builds for each service:
- OpenTelemetry only while tracing samples. BentoML puts OpenTelemetryMiddleware on every stack, sampling or not;
  with its default sample rate of 0 it records nothing, yet per request it builds a span, reads the headers into
  attributes and wraps every receive and send: 0.3 core-ms per image in the HTTP-facing process under load
  (bench/serve_cpu.py). Kept, with BentoML's request ids (X-BentoML-Request-ID), when a configuration samples.
- Request metrics labelled by route, not by URL. BentoML's RunnerTrafficMetricsMiddleware labels its series with the
  raw request path, so every distinct URL a client sends becomes new series: 3,000 unknown paths grew /metrics from
  385 KB to 26 MB and its scrape from 0.06 to 3.4 s (issue 27). `RouteLabelledMetrics` gives BentoML's middleware
  the route's template instead (/v2/models/{name}/infer), and `unmatched` for any path no route serves.
"""
from __future__ import annotations

import bentoml
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

BENTOML_VERSION = "1.4.39"
UNMATCHED = "unmatched"
_ORIGINAL_SCOPE = "imgcls.original_scope"
_middlewares = ServiceAppFactory.middlewares


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


def _edited(stack: list[Middleware]) -> list[Middleware]:
    out = []
    for m in stack:
        if m.cls is OpenTelemetryMiddleware and not tracing_on():
            continue
        if m.cls is RunnerTrafficMetricsMiddleware:
            m = Middleware(RouteLabelledMetrics, *m.args, **m.kwargs)
        out.append(m)
    return out


def _stack(self) -> list[Middleware]:
    return _edited(_middlewares.fget(self))


def edit_middleware_stack() -> None:
    if bentoml.__version__ != BENTOML_VERSION:
        raise RuntimeError(f"serving/stack.py edits BentoML {BENTOML_VERSION}'s middleware stack; this is BentoML "
                           f"{bentoml.__version__}: check RunnerTrafficMetricsMiddleware and the stack, then the pin")
    ServiceAppFactory.middlewares = property(_stack)
