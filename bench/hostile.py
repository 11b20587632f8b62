"""Hostile requests against the real service, each measured: status, peak resident memory growth and CPU seconds of
the whole service (every process of the pod), and wall time; then /metrics after thousands of unknown URLs.

python -m bench.hostile --model artifacts/hymenoptera/LATEST-dir [--results bench/RESULTS.md]

Starts the real service with its default limits on 127.0.0.1 and appends the table to bench/RESULTS.md. The same
requests and the same `Watch` are the assertions of tests/serving/test_hostile.py (issue 27's goals: no request
grows the service's memory by more than 300 MB or costs more than 2 s of CPU, no 5xx, /metrics under 1 MB).
"""
from __future__ import annotations

import argparse
import io
import platform
import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEMORY_BOUND_MB, CPU_BOUND_S, METRICS_BOUND_BYTES = 300, 2.0, 1 << 20


class Watch:
    """Peak growth of the resident memory, and the CPU seconds, of a process tree while the block runs. RSS is
    sampled every 2 ms (a peak shorter than that can be missed); CPU is exact (the kernel's counters)."""

    def __init__(self, root_pid: int):
        self.procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
        self.peak_mb = self.cpu_s = self.wall_s = 0.0

    def _rss(self) -> int:
        return sum(p.memory_info().rss for p in self.procs if p.is_running())

    def _cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs if p.is_running())

    def __enter__(self) -> Watch:
        self._base, self._cpu0, self._t0 = self._rss(), self._cpu(), time.perf_counter()
        self._peak, self._stop = self._base, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb = (self._peak - self._base) / 1e6
        self.cpu_s = self._cpu() - self._cpu0
        self.wall_s = time.perf_counter() - self._t0


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    return encode(Image.new(mode, size), "PNG")


def _upload(data: bytes, name: str = "x.png") -> dict:
    return {"files": {"image": (name, data, "application/octet-stream")}}


def _batch(blob: bytes, n: int) -> dict:
    return {"files": [("images", (f"{i}.png", blob, "image/png")) for i in range(n)]}


@dataclass
class Case:
    name: str
    path: str
    request: Callable[[], dict]  # httpx.post keyword arguments, built when sent (large bodies are not kept)
    statuses: tuple[int, ...]
    headers: dict | None = None


CASES = [
    Case("65000x1 PNG (142 B): was 17.5 GB, 43 s", "/predict", lambda: _upload(png((65000, 1))), (200,)),
    Case("1x2000000 PNG: was 500 (MemoryError)", "/predict", lambda: _upload(png((1, 2_000_000))), (200,)),
    Case("3000x1 PNG (88 B): was 846 MB, 1.2 s", "/predict", lambda: _upload(png((3000, 1))), (200,)),
    Case("5000x5000 RGBA PNG (25 MP, at the limit)", "/predict", lambda: _upload(png((5000, 5000), "RGBA")), (200,)),
    Case("6000x6000 PNG (over max_image_pixels)", "/predict", lambda: _upload(png((6000, 6000))), (413,)),
    Case("64 x 1000x780 RGBA PNG batch (50 MP)", "/predict_batch", lambda: _batch(png((1000, 780), "RGBA"), 64),
         (200,)),
    Case("64 x 2000x2000 PNG batch (over max_request_pixels)", "/predict_batch",
         lambda: _batch(png((2000, 2000)), 64), (413,)),
    Case("occlusion maps of 2 photo-sized PNGs (max_occlusion_images)", "/explain_batch",
         lambda: {**_batch(png((640, 480)), 2), "data": {"method": "occlusion"}}, (200,)),
    Case("occlusion maps of 3 images (over max_occlusion_images)", "/explain_batch",
         lambda: {**_batch(png((64, 64)), 3), "data": {"method": "occlusion"}}, (413,)),
    Case("PNG heatmaps of 64 photo-sized PNGs x 2 classes (max_heatmap_pngs)", "/explain_batch",
         lambda: {**_batch(png((640, 480)), 64), "data": {"format": "png", "top_k": "2"}}, (200,)),
    Case("PNG heatmaps of 64 images x 3 classes (over max_heatmap_pngs)", "/explain_batch",  # the demo's classes
         lambda: {**_batch(png((64, 64)), 64), "data": {"format": "png", "top_k": "2", "label": "ants"}}, (413,)),
    Case("image under another field name", "/predict",
         lambda: {"files": {"file": ("x.png", png((64, 64)), "image/png")}}, (400,)),
    Case("a class label of 1 MB (/explain)", "/explain",
         lambda: {**_upload(png((64, 64))), "data": {"label": "x" * 1_000_000}}, (400,)),
    Case("class names of 1 MB (/feedback)", "/feedback",
         lambda: {"json": {"predicted": "x" * 1_000_000, "actual": "y" * 1_000_000}}, (400,)),
    Case("top_k of 5000 digits", "/predict", lambda: {**_upload(png((64, 64))), "data": {"top_k": "9" * 5000}},
         (400,)),
    Case("Inference-Header-Content-Length of 5000 digits", "/v2/models/{name}/infer", lambda: {"content": b"{}"},
         (400,), {"inference-header-content-length": "9" * 5000}),
    Case("Inference-Header-Content-Length '²'", "/v2/models/{name}/infer", lambda: {"content": b"{}"},
         (400,), {"inference-header-content-length": b"\xb2"}),  # latin-1: Python reads it as a digit
]


def send(client: httpx.Client, case: Case, model_name: str) -> httpx.Response:
    return client.post(case.path.format(name=model_name), headers=case.headers, **case.request())


def random_paths(n: int, seed: int = 0) -> list[str]:
    """URLs a client may send that no route serves (or that a route with a parameter serves): each distinct."""
    rng = random.Random(seed)
    shapes = ["/{t}", "/predict/{t}", "/v2/models/{t}/infer", "/v2/models/{t}/versions/{t}", "/static_content/{t}",
              "/{t}/{t}/{t}", "/v2/models/{t}"]
    token = "".join
    return [rng.choice(shapes).format(t=token(rng.choices(string.ascii_letters + string.digits + "-._~%", k=12)))
            for _ in range(n)]


def metrics_growth(client: httpx.Client, n: int) -> tuple[int, int, float]:
    """(/metrics bytes before, after n requests to distinct URLs, seconds of the last scrape)."""
    before = len(client.get("/metrics").content)
    for path in random_paths(n):
        client.get(path)
    start = time.perf_counter()
    after = len(client.get("/metrics").content)
    return before, after, time.perf_counter() - start


def main() -> None:
    from contract.card import load_card
    from serving.launch import Server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a version directory (model.onnx + model.json)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--paths", type=int, default=3000)
    args = ap.parse_args()
    card = load_card(args.model)
    srv = Server({"SERVING_MODEL_DIR": str(args.model.resolve())})
    rows = []
    try:
        assert srv.wait_ready(), "the service did not become ready"
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            # warm-up at full batches of ordinary photos: onnxruntime's memory arena grows to the largest batch once
            # and keeps it; that is the model's cost, not the input's
            photo = png((400, 300), "RGB")
            for _ in range(2):
                client.post("/predict_batch", **_batch(photo, 64))
            for case in CASES:
                with Watch(srv.proc.pid) as w:
                    status = send(client, case, card.name).status_code
                rows.append(f"| {case.name} | {status} | {w.peak_mb:.0f} | {w.cpu_s:.2f} | {w.wall_s:.2f} |")
            before, after, scrape_s = metrics_growth(client, args.paths)
    finally:
        srv.stop()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/hostile.py: {card.name} ({card.image_size} px), default limits, {stamp}, "
            f"{platform.machine()}, {psutil.cpu_count()} CPUs\n\n"
            f"Bounds (issue 27): memory growth <= {MEMORY_BOUND_MB} MB, CPU <= {CPU_BOUND_S} s per request, "
            f"/metrics < {METRICS_BOUND_BYTES} bytes.\n\n"
            "| request | status | peak RSS growth (MB) | CPU (s, all processes) | wall (s) |\n"
            "|---|---:|---:|---:|---:|\n"
            + "\n".join(rows) + f"\n\n/metrics: {before} bytes before, {after} bytes after {args.paths} requests to "
            f"distinct URLs (scrape {scrape_s * 1000:.0f} ms).\n")
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
