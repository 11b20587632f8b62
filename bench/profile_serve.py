"""Where the service's CPU goes under load, by function: py-spy samples of the service's processes at once.

python -m bench.profile_serve --model artifacts/hymenoptera [--concurrency 32] [--seconds 20] [--native]

Starts the real service, loads it with real JPEGs (bench/serve.py's client) and, meanwhile, samples the
ImageClassifier worker process (and the Model service's, in checkouts with the two-service layout) with py-spy (`pip
install py-spy`; it reads the processes from outside, no code change). For each process: the share of its samples
per leaf function (where the CPU is, not who called it), per thread (the event loop vs the worker threads) and per
module family (onnxruntime, PIL, multipart/HTTP, serialisation, asyncio...). py-spy leaves out threads it sees idle,
but an event loop blocked in uvloop's epoll is counted as busy (the leaf `Runner.run`) unless --native shows the
epoll frame, which is then left out: read the tables of a run without --native as waiting plus work. --native pauses
each process at every sample, which slows it down (its worker threads most): use its tables for what runs inside a
thread, and bench/serve_cpu.py's per-thread CPU for how the CPU splits between threads. Appends the tables to
bench/RESULTS.md.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench.serve import Server, load, parse_with_model, service_bench_parser

# module families, matched on the file of the leaf frame (first match wins)
FAMILIES = [("onnxruntime", "onnxruntime"), ("PIL decode/resize", "PIL"), ("numpy", "numpy"),
            ("multipart / form parsing", "multipart"), ("HTTP (uvicorn, h11, httptools, starlette)", "uvicorn"),
            ("HTTP (uvicorn, h11, httptools, starlette)", "h11"), ("HTTP (uvicorn, h11, httptools, starlette)",
                                                                   "starlette"),
            ("client to Model (aiohttp)", "aiohttp"), ("serialisation (pydantic, json, pickle)", "pydantic"),
            ("serialisation (pydantic, json, pickle)", "json"), ("serialisation (pydantic, json, pickle)", "pickle"),
            ("metrics (prometheus)", "prometheus"), ("asyncio / anyio / threads", "asyncio"),
            ("asyncio / anyio / threads", "anyio"), ("asyncio / anyio / threads", "threading"),
            ("BentoML", "bentoml"), ("this service (serving/, contract/)", "serving/"),
            ("this service (serving/, contract/)", "contract/")]


# stages of a request, matched anywhere in a sample's stack (inclusive: a stage's callees count for it)
STAGES = [("decode + resize + crop (contract.preprocess)", ("contract/preprocess.py",)),
          ("thread hop for decoding (anyio.to_thread)", ("anyio/_backends/_asyncio.py:run_sync", "run_sync_in_worker")),
          ("multipart parsing", ("multipart",)),
          ("upload to a temporary file (BentoML FileSchema)", ("_bentoml_sdk/validators.py",)),
          ("batching (serving.coalesce)", ("serving/coalesce.py",)),
          ("onnxruntime", ("onnxruntime",)),
          ("answer (pydantic, JSON)", ("pydantic", "json/")),
          ("metrics (prometheus_client)", ("prometheus",)),
          ("HTTP server (uvicorn, h11, httptools)", ("uvicorn", "h11", "httptools"))]


# native frames of a thread that waits, off the CPU: an event loop for I/O, a worker for work or a lock, any thread
# for the GIL (CPython takes it in pthread_cond_timedwait)
IDLE = ("epoll_pwait", "epoll_wait", "PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait",
        "sem_timedwait", "sem_wait")


def samples(raw: Path):
    """(thread name, frames, count) per busy stack of a `py-spy record --threads` raw file. py-spy's own idle check
    misses a uvloop event loop blocked in epoll (non-native, such samples read as the leaf Runner.run) and threads
    waiting for a lock or the GIL; with --native they are recognised by their waiting frame and left out."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if frames and not any(f.startswith(IDLE) for f in frames):  # no frames: a thread py-spy saw idle
            yield thread.split(": ", 1)[-1], frames, int(count)


def stages(raw: Path) -> list[tuple[str, float]]:
    counts, total = Counter(), 0
    for _, frames, count in samples(raw):
        stack = ";".join(frames)
        total += count
        for name, keys in STAGES:
            if any(k in stack for k in keys):
                counts[name] += count
    return [(name, 100 * counts[name] / max(total, 1)) for name, _ in STAGES if counts[name]]


def family(frame: str) -> str:
    return next((name for name, key in FAMILIES if key in frame), "other")


def record(pid: int, seconds: int, out: Path, native: bool) -> subprocess.Popen:
    return subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                             "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--format", "raw",
                             "--threads", *(["--native"] if native else ["--nonblocking"]), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(raw: Path, top: int) -> tuple[list, list, list]:
    """Shares of busy samples: per leaf function (Python frames only: a native leaf counts for its Python caller),
    per module family, per thread (MainThread: the event loop; AnyIO worker threads: decoding or onnxruntime)."""
    leaves, families, threads = Counter(), Counter(), Counter()
    for thread, frames, count in samples(raw):
        python = [f for f in frames if ".py:" in f] or frames
        leaves[python[-1]] += count
        families[family(python[-1])] += count
        threads[thread] += count
    total = sum(leaves.values()) or 1
    return ([(k, 100 * v / total) for k, v in leaves.most_common(top)],
            [(k, 100 * v / total) for k, v in families.most_common()],
            [(k, 100 * v / total) for k, v in threads.most_common()])


def main() -> None:
    ap = service_bench_parser()
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--native", action="store_true",
                    help="also sample C frames (py-spy --native; pauses each process per sample): idle event loops "
                         "are recognised and left out, and C time is charged to its Python caller")
    args, version, card = parse_with_model(ap)
    blobs = [p.read_bytes() for p in sorted(args.data.rglob("*.jpg"))[:64]]
    tmp = Path(tempfile.mkdtemp())
    srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_ACCESS_LOG": "false"}, tmp / "serve.log")
    try:
        assert srv.wait_ready(), "service did not become ready"
        load(srv.url, blobs, args.concurrency, 2 * args.concurrency)  # warm-up
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        pids = {name: p.pid for name in ("ImageClassifier", "Model") for p in workers
                if f"--service-name {name}" in " ".join(p.cmdline())}
        stop = threading.Event()

        def keep_loading() -> None:
            # no /metrics scrapes around each round (batches=False): at c = 1 a round of 4 requests made the
            # service's metrics exposition a tenth of the profile, the bench's own cost
            while not stop.is_set():
                load(srv.url, blobs, args.concurrency, max(64, 4 * args.concurrency), batches=False)
        loader = threading.Thread(target=keep_loading)
        loader.start()
        spies = {name: record(pid, args.seconds, tmp / f"{name}.txt", args.native) for name, pid in pids.items()}
        for spy in spies.values():
            spy.wait()
        stop.set()
        loader.join()
    finally:
        srv.stop()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n### bench/profile_serve.py: {card.name} ({card.image_size} px), c = {args.concurrency}, "
             f"{args.seconds} s of py-spy at 200 Hz{' --native' if args.native else ''}, {stamp}, "
             f"{platform.machine()}, "
             f"{len(os.sched_getaffinity(0))} cores, CPU\n"]
    for name in spies:
        leaves, families, threads = summarise(tmp / f"{name}.txt", args.top)
        lines += [f"{name}: share of samples per stage (inclusive; a sample can fall in several)\n",
                  "| stage | % |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in stages(tmp / f"{name}.txt")], "",
                  f"{name}: share of samples by thread\n", "| thread | % |", "|---|---|",
                  *[f"| {k} | {v:.1f} |" for k, v in threads], "",
                  f"{name}: share of samples by module family\n", "| family | % |", "|---|---|",
                  *[f"| {k} | {v:.1f} |" for k, v in families], "",
                  f"{name}: top leaf functions\n", "| function (file:line) | % |", "|---|---|",
                  *[f"| `{k[:110]}` | {v:.1f} |" for k, v in leaves], ""]
    text = "\n".join(lines)
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
