"""A load generator written in C (wrk, Debian's `wrk` package) for the service benchmarks.

bench/serve.py's Python client spends about 1.6 core-ms a request (bench/RESULTS.md, 2026-12-01) on the same two
cores as the server, which is 12-22 % of what a server itself spends per image: every img/s ratio measured with it
is pulled toward 1.0x, most for the faster server. In a cluster the clients run elsewhere. wrk keeps the same
closed loop (`concurrency` connections, each sending its next request when the last is answered, HTTP/1.1
keep-alive) for about 0.1 core-ms a request, which the row reports (client_ms) as the Python client's row does.

The requests are byte for byte what the Python client sends: each `Send` of bench/serve.py (a multipart upload, a
JSON body, ...) is built once per photo by httpx itself, recorded instead of sent (httpx.MockTransport), and wrk
replays them in turn. wrk runs for a time, not a count: the warm-up (one second) measures the rate, and the run
lasts long enough for about `requests` requests at that rate. Any error (a status other than 2xx, a timeout, a
dropped connection) fails the run: a table built on failed requests would be fast and wrong.
"""
from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serve import Send, multipart, scrape_batches

# each request file: its path, its Content-Type and its body, the first two on a line each
SCRIPT = r"""
local requests, count, at = {}, 0, 0
function init(args)
  for _, file in ipairs(args) do
    local f = assert(io.open(file, "rb"))
    local path, ctype, body = f:read("*l"), f:read("*l"), f:read("*a")
    f:close()
    count = count + 1
    requests[count] = wrk.format("POST", path, {["Content-Type"] = ctype}, body)
  end
end
function request()
  at = at % count + 1
  return requests[at]
end
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format('BENCH_WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p95": %d, "p99": %d}\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99)))
end
"""
SETTLE_S = 0.5  # after a run, the requests wrk left in flight finish (p99 is ~0.3 s at c = 32 here)


@dataclass(frozen=True)
class Recorded:
    path: str
    content_type: str
    body: bytes


def recorded(send: Send, blobs: list[bytes]) -> list[Recorded]:
    """What `send` puts on the wire for each photo, built by httpx and kept instead of sent."""
    kept: list[httpx.Request] = []

    def keep(request: httpx.Request) -> httpx.Response:
        kept.append(request)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(keep)) as client:
        for blob in blobs:
            send(client, "http://bench", blob)
    return [Recorded(r.url.raw_path.decode(), r.headers["content-type"], r.read()) for r in kept]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("--client wrk needs wrk on the PATH: apt-get install wrk (Debian's package, 4.1)")
    return found


class Wrk:
    """The recorded requests as files wrk reads, for as long as the object is open."""

    def __init__(self, send: Send, blobs: list[bytes]):
        self._tmp = tempfile.TemporaryDirectory()
        folder = Path(self._tmp.name)
        self.script = folder / "bench.lua"
        self.script.write_text(SCRIPT)
        self.files = []
        for i, r in enumerate(recorded(send, blobs)):
            self.files.append(folder / f"{i}.request")
            self.files[-1].write_bytes(f"{r.path}\n{r.content_type}\n".encode() + r.body)

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Wrk:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def run(self, url: str, concurrency: int, seconds: float) -> tuple[dict, float]:
        """One wrk run, whole seconds: (its summary, its CPU ms)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([wrk_binary(), "-t", "1", "-c", str(concurrency), "-d", f"{max(1, math.ceil(seconds))}s",
                               "--timeout", "120s", "-s", str(self.script), url, "--", *map(str, self.files)],
                              capture_output=True, text=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_WRK ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        summary = json.loads(lines[-1].removeprefix("BENCH_WRK "))
        errors = {k: summary[k] for k in ("connect", "read", "write", "status", "timeout") if summary[k]}
        if errors or summary["requests"] == 0:
            raise RuntimeError(f"wrk: {summary['requests']} requests with errors {errors}: see the server's log")
        time.sleep(SETTLE_S)
        cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
        return summary, cpu_ms

    def warm(self, url: str, concurrency: int) -> float:
        """One second of load (sessions, pools, batch sizes settle): the rate, which sizes the run."""
        summary, _ = self.run(url, concurrency, 1.0)
        return summary["requests"] / (summary["duration_us"] / 1e6)

    def measure(self, url: str, concurrency: int, requests: int, rate: float, batches: bool = True) -> dict:
        """About `requests` requests at the warm-up's `rate`: bench.serve.load's row (img_s, p50/p95/p99 ms,
        mean_batch, per_call) and requests (wrk's count), served (what the server ran in the window: wrk's count
        and the `concurrency` requests it left in flight, read from this service's /metrics with `batches`,
        else counted as such), client_ms (wrk's CPU per request)."""
        s0, c0, calls0 = scrape_batches(url) if batches else (0.0, 0.0, 0.0)
        summary, cpu_ms = self.run(url, concurrency, requests / rate)
        s1, c1, calls1 = scrape_batches(url) if batches else (0.0, 0.0, 0.0)
        n = summary["requests"]
        return {"img_s": n / (summary["duration_us"] / 1e6), "p50": summary["p50"] / 1000,
                "p95": summary["p95"] / 1000, "p99": summary["p99"] / 1000, "requests": n,
                "served": s1 - s0 if batches else n + concurrency, "client_ms": cpu_ms / n,
                "mean_batch": (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
                "per_call": (s1 - s0) / (calls1 - calls0) if calls1 > calls0 else float("nan")}


def warm(url: str, blobs: list[bytes], concurrency: int) -> tuple[Wrk, float]:
    """bench/serve_cpu.py's client protocol, on /predict (multipart): (the open requests, the rate)."""
    client = Wrk(multipart, blobs)
    return client, client.warm(url, concurrency)


def run(url: str, blobs: list[bytes], concurrency: int, requests: int, warmed: tuple[Wrk, float]) -> dict:
    client, rate = warmed
    with client:
        return client.measure(url, concurrency, requests, rate)
