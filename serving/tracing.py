"""BentoML's OpenTelemetry middleware only where tracing is on.

BentoML 1.4.39 (pinned in pyproject) puts OpenTelemetryMiddleware on every service's ASGI stack, sampling or not.
With its default sample rate of 0 it records nothing, yet per request it still builds a span, reads the headers
into attributes and wraps every receive and send: 0.3 core-ms per image in the HTTP-facing process under load
(bench/serve_cpu.py, about 6 % of its CPU). Left out while BentoML's `tracing.sample_rate` is unset or 0; kept,
with BentoML's trace and request ids (X-BentoML-Request-ID), as soon as a BentoML configuration turns tracing on.
"""
from __future__ import annotations

from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.configuration.containers import BentoMLContainer
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

_middlewares = ServiceAppFactory.middlewares


def tracing_on() -> bool:
    return bool(BentoMLContainer.tracing.sample_rate.get())


def _stack(self) -> list:
    stack = _middlewares.fget(self)
    return stack if tracing_on() else [m for m in stack if m.cls is not OpenTelemetryMiddleware]


def only_when_sampling() -> None:
    ServiceAppFactory.middlewares = property(_stack)
