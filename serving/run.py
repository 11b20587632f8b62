"""`python -m serving.run [bentoml serve options]` (console script imgcls-serve): `bentoml serve` with a graceful stop.

bentoml serve stops its worker processes at once on SIGTERM, so a request in flight is cut off and a load balancer
that has not yet seen the pod go unready keeps sending new ones. This parent process takes SIGTERM instead and, in
order:
1. makes /readyz answer 503 (a drain file the services check), so load balancers stop sending new requests;
2. keeps serving for drain_seconds, then until no request is in flight (BentoML's own in-progress gauge on /metrics),
   at most drain_timeout_seconds;
3. stops bentoml serve and exits with its exit code.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .artifact import pin_version
from .settings import load_settings

log = logging.getLogger("serving.run")
PROBES = {"/metrics", "/readyz", "/livez", "/healthz"}


def in_flight(url: str) -> float:
    """Requests in progress on every service, from the Prometheus text of /metrics (probes excluded)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_request_in_progress{"):
            labels, value = line.rsplit(" ", 1)
            if not any(f'endpoint="{p}"' in labels for p in PROBES):
                total += float(value)
    return total


def gone(exc: OSError) -> bool:
    """The server no longer listens (refused), as against a slow or failed scrape (timeout, reset), which says
    nothing about requests in flight: a slow /metrics once ended the drain early and an in-flight batch got 503."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ConnectionRefusedError)


def drain(url: str, min_seconds: float, timeout: float) -> float:
    """Wait min_seconds, then until nothing is in flight or timeout; returns the requests still in flight."""
    start = time.monotonic()
    time.sleep(min_seconds)
    left = float("nan")
    while time.monotonic() - start < max(timeout, min_seconds):
        try:
            left = in_flight(url)
        except OSError as exc:
            if gone(exc):
                return float("nan")
            log.warning("reading in-flight requests from /metrics failed (%s); still draining", exc)
            left = float("nan")
        if left == 0:
            return 0.0
        time.sleep(0.1)
    return left


def local_url(argv: list[str]) -> str:
    port = os.environ.get("BENTOML_PORT", "3000")
    if "--port" in argv:
        port = argv[argv.index("--port") + 1]
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] [serving.run] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    settings = pin_version(load_settings())  # one version for this whole server start (serving.artifact)
    if settings.model_dir is not None:
        log.info("model version directory for this start: %s", settings.model_dir)
    flag = Path(tempfile.mkdtemp(prefix="imgcls-serve-")) / "draining"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Same process group as this one: a SIGKILL to the group (or the pod) still takes everything down.
    child = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:ImageClassifier", *argv],
                             env=os.environ | {"SERVING_DRAIN_FILE": str(flag)})
    while child.poll() is None and not stop.wait(0.2):
        pass
    if child.poll() is None:
        flag.touch()
        log.info("SIGTERM: readiness is now false; draining (at least %.1f s, at most %.1f s)",
                 settings.drain_seconds, settings.drain_timeout_seconds)
        left = drain(local_url(argv), settings.drain_seconds, settings.drain_timeout_seconds)
        log.info("drained (%s request(s) still in flight); stopping bentoml serve", left)
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    flag.unlink(missing_ok=True)
    flag.parent.rmdir()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
