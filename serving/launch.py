"""Start the real service (`python -m serving.run`, as the container does) on a free 127.0.0.1 port, wait for it, stop
it: one helper for the demo, the tests and the benchmarks. The caller stops what it started."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> bool:
    """Poll /readyz until 200; False at the deadline; an error if the server process has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until each has exited (a zombie left for its new parent to reap counts as exited: it holds nothing)."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


class Server:
    def __init__(self, env: dict, log: Path | None = None, cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log if log is not None else os.devnull, "w")
        # a BentoML home of its own: `bentoml serve` empties its home's Prometheus directory when it starts, which
        # wipes the metrics of any other server running from the same home
        self.home = tempfile.TemporaryDirectory(prefix="bentoml-home-")
        full_env = os.environ | {"BENTOML_DO_NOT_TRACK": "True", "ORT_DISABLE_TELEMETRY": "1",
                                 "SERVING_DRAIN_SECONDS": "0.2", "BENTOML_HOME": self.home.name} | env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.run", "--host", "127.0.0.1", "--port", str(self.port)], cwd=cwd,
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own session: a stuck server and its workers are killed as a group

    def wait_ready(self, timeout: float = 120) -> bool:
        return wait_ready(self.url, timeout, self.proc)

    def wait_up(self, timeout: float = 120) -> None:
        """Listening (livez answers), ready or not."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                httpx.get(self.url + "/livez", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("server never started listening")

    def terminate(self) -> None:
        """SIGTERM to serving.run alone, as Kubernetes (through dumb-init --single-child) sends it."""
        self.proc.send_signal(signal.SIGTERM)

    def processes(self) -> list[psutil.Process]:
        """The server and every process it started, wherever they are: a worker may start a session of its own."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 60) -> int:
        """SIGTERM, up to `grace` seconds for a drain, then SIGKILL to the server's session and to any worker that
        outlived it."""
        started = self.processes()  # read before the stop: orphans are no longer the server's children after it
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:  # its own session: the server and its workers, nothing else
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        leftover = [p for p in started[1:] if p.is_running()]  # a worker that outlived the server (its own session)
        for p in leftover:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _wait_gone(leftover, timeout=30)  # gone, not only signalled, when stop() returns
        self.log.close()
        self.home.cleanup()
        return self.proc.returncode
