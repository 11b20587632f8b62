"""bench/profile_serve.py's reading of py-spy's raw output: busy stacks are counted, idle ones are not."""
from __future__ import annotations

from bench.profile_serve import samples, summarise

RAW = """thread (11): MainThread;Runner.run (asyncio/runners.py:118);Session.run (onnxruntime/capi/x.py:395) 30
thread (12): AnyIO worker thread;WorkerThread.run (anyio/x.py:1133);preprocess (contract/preprocess.py:90) 10
thread (13): AnyIO worker thread 7
thread (14): MainThread;Runner.run (asyncio/runners.py:118);epoll_wait (libc.so.6) 5
"""


def test_threads_without_frames_and_waiting_threads_are_left_out(tmp_path):
    # py-spy writes a thread it sees idle as its name and a count, no frames: once an IndexError in summarise
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    assert [(thread, count) for thread, _, count in samples(raw)] == [("MainThread", 30), ("AnyIO worker thread", 10)]
    leaves, families, threads = summarise(raw, top=5)
    assert dict(families) == {"onnxruntime": 75.0, "this service (serving/, contract/)": 25.0}
    assert dict(threads) == {"MainThread": 75.0, "AnyIO worker thread": 25.0}
