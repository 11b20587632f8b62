"""serving.launch.Server, the helper the demo, the tests and the benchmarks start the service with: it stops what it
started, all of it."""
from __future__ import annotations

import os

import psutil
import pytest

from serving.launch import Server

pytestmark = pytest.mark.slow


def test_stop_leaves_no_process_behind_even_workers_that_do_not_stop(artifact, tmp_path):
    """BentoML's workers lead sessions of their own, so the old fallback (SIGKILL to the server's process group)
    missed any worker that did not stop: it outlived the test, holding its memory and port (issue 27)."""
    srv = Server({"SERVING_MODEL_DIR": str(artifact), "SERVING_API_WORKERS": "2"}, tmp_path / "serve.log")
    try:
        assert srv.wait_ready(), (tmp_path / "serve.log").read_text()[-2000:]
        started = srv.processes()
        workers = [p for p in started if "--service-name" in p.cmdline()]
        assert len(workers) == 2 and all(os.getsid(p.pid) == p.pid for p in workers), \
            "BentoML's workers are expected to lead sessions of their own"
        for worker in workers:
            worker.suspend()  # SIGSTOP: they take no part in the stop
    finally:
        srv.stop(grace=5)  # the suspended workers never drain: the kills are under test, not the wait for them
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline()[:4] for p in alive]
