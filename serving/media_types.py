"""Each response's media type worked out once per output type instead of once per response.

BentoML 1.4.39 (pinned in pyproject) names the media type of an answer by building a pydantic TypeAdapter of the
API's output type and generating its JSON schema, for every response (`IOMixin.mime_type`). For the Model
service's ndarray answers that was 15 % of its event loop's samples under load, a quarter of those not waiting
for I/O (py-spy --native, bench/RESULTS.md session 8). The
answer depends on the output type alone (its class attributes and annotation, fixed when the service is defined),
so it is cached per type.
"""
from __future__ import annotations

import functools

from _bentoml_sdk.io_models import IOMixin

_mime_type = IOMixin.mime_type.__func__


def cache_per_type() -> None:
    if not hasattr(IOMixin.mime_type, "cache_info"):
        IOMixin.mime_type = classmethod(functools.cache(_mime_type))
