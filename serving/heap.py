"""The worker's start-up objects kept out of the garbage collector's full collections.

A worker holds some 120,000 long-lived Python objects from start-up (BentoML, pydantic, onnxruntime's bindings, the
card). CPython's full (generation 2) collection walks all of them, and it runs now and then under load: 22-52 ms
with the event loop stopped, every request in flight waiting (measured in a worker under bench/serve_cpu.py's load,
2026-12-01). Frozen after start-up (`gc.freeze`, which Python documents for this), they are never walked again and a
full collection covers only what requests created since. Garbage from start-up is collected first, so nothing that
could be freed is kept forever.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("bentoml.serving")  # the logger bentoml serve shows at INFO


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now to the permanent generation; returns how many were frozen."""
    t = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d objects from start-up frozen out of the garbage collector's full collections (%.0f ms)", frozen,
             (time.perf_counter() - t) * 1000)
    return frozen
