"""Plain helpers for the tests (imported as `helpers`; tests/ is on sys.path through the root conftest)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from serving.launch import Server

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
DATA = SHARED / "data" / "hymenoptera_data"


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.iterdir())[:n]:
        shutil.copy(p, dst / p.name)
        out.append(dst / p.name)
    return out


@contextlib.contextmanager
def running_server(env: dict, log: Path) -> Iterator[Server]:
    """The real service (serving.launch.Server) with these SERVING_* settings, ready, stopped afterwards; a server that
    never becomes ready fails the caller with the end of its log."""
    srv = Server(env, log)
    try:
        assert srv.wait_ready(), log.read_text()[-3000:]
        yield srv
    finally:
        srv.stop()


def scrape(url) -> dict[str, float]:
    """The service's own series (imgcls_*) from its real /metrics, and BentoML's request series."""
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(("imgcls_", "bentoml_service_request")):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(metrics: dict, metric: str, **labels) -> float:
    """The sum of a metric's series that carry these labels."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metrics.items()
               if re.match(metric + r"(\{|$)", k) and all(w in k for w in want))


def run_batch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m serving.batch ARGS` as a user runs it, with these environment variables added."""
    return subprocess.run([sys.executable, "-m", "serving.batch", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
