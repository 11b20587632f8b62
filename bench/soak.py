"""Soak: N concurrent clients for T seconds mixing good images, bad inputs and feedback against the real service.

python -m bench.soak --model artifacts/hymenoptera [--clients 64] [--seconds 60] [--max-requests 50000]

Starts the real service (serving.run -> bentoml serve) on 127.0.0.1, warms it up, then runs the mix with aiohttp
and reports requests by kind and status, latency of the good ones, the resident memory of the server's processes
at the start, half-way and at the end (after a warm-up at full load), and whether any worker process was replaced.
Appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import platform
import random
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _png(size, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def bad_inputs(good_jpeg: bytes) -> dict[str, tuple[str, object]]:
    """name -> (endpoint, payload): payload is bytes (a file upload), a dict (JSON) or ("form", fields)."""
    return {
        "empty_file": ("/predict", b""),
        "not_an_image": ("/predict", b"%PDF-1.4 definitely not a picture" * 20),
        "truncated_jpeg": ("/predict", good_jpeg[: len(good_jpeg) // 3]),
        "pixel_bomb": ("/predict", _png((12000, 12000))),
        "bad_base64": ("/predict_base64", {"image": "***not base64***"}),
        "top_k_zero": ("/predict_base64", {"image": base64.b64encode(good_jpeg).decode(), "top_k": 0}),
        "unknown_field": ("/predict_base64", {"image": base64.b64encode(good_jpeg).decode(), "colour": "blue"}),
        "unknown_class": ("/feedback", {"predicted": "ants", "actual": "wasps"}),
        "text_not_file": ("/predict", ("form", {"image": "http://169.254.169.254/latest/meta-data"})),
    }


async def _send(session, url, endpoint, payload):
    if isinstance(payload, bytes):
        form = aiohttp.FormData()
        form.add_field("image", payload, filename="x.jpg", content_type="image/jpeg")
        return await session.post(url + endpoint, data=form)
    if isinstance(payload, tuple):
        return await session.post(url + endpoint, data=aiohttp.FormData(payload[1]))
    return await session.post(url + endpoint, json=payload)


async def _client(session, url, deadline, budget, goods, bads, classes, rng, tally, latencies):
    while time.monotonic() < deadline and budget["left"] > 0:
        budget["left"] -= 1
        roll = rng.random()
        if roll < 0.55:
            kind, endpoint, payload = "good_image", "/predict", rng.choice(goods)
        elif roll < 0.65:
            kind, endpoint = "good_base64", "/predict_base64"
            payload = {"image": base64.b64encode(rng.choice(goods)).decode(), "top_k": rng.randint(1, len(classes))}
        elif roll < 0.80:
            kind, endpoint = "feedback", "/feedback"
            payload = {"predicted": rng.choice(classes), "actual": rng.choice(classes)}
        else:
            kind = "bad:" + rng.choice(sorted(bads))
            endpoint, payload = bads[kind[4:]]
        start = time.perf_counter()
        try:
            async with await _send(session, url, endpoint, payload) as r:
                body = await r.read()
                status = r.status
        except aiohttp.ClientError as exc:
            status, body = type(exc).__name__, b""
        if kind.startswith("good"):
            latencies.append(time.perf_counter() - start)
        if isinstance(status, int) and status >= 400 and b"message" not in body and b"error" not in body:
            status = f"{status} without message"
        tally[(kind, status)] += 1


def server_processes(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def rss_mb(root_pid: int) -> float:
    return sum(p.memory_info().rss for p in server_processes(root_pid)) / 2**20


def identities(root_pid: int) -> set[tuple[int, float]]:
    return {(p.pid, p.create_time()) for p in server_processes(root_pid)}


async def _run(url, root_pid, goods, classes, clients, seconds, max_requests, seed, warmup):
    rng = random.Random(seed)
    bads = bad_inputs(goods[0])
    tally, latencies, samples = Counter(), [], []
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Full load until the server's memory levels off (10 s windows, growth under 2 %, at most `warmup` s):
        # allocator arenas, onnxruntime's arena and thread pools reach their working size before "before".
        # (Measured: ~75 s and ~12k requests from a cold start to a flat line at 64 clients.)
        warm_start, warm_rss, warm_tally = time.monotonic(), rss_mb(root_pid), Counter()
        while time.monotonic() - warm_start < warmup:
            await asyncio.gather(*(_client(session, url, time.monotonic() + 10, {"left": max_requests}, goods, bads,
                                           classes, random.Random(-i), warm_tally, []) for i in range(clients)))
            rss = rss_mb(root_pid)
            if rss < warm_rss * 1.02:
                break
            warm_rss = rss
        warmed = time.monotonic() - warm_start
        procs = identities(root_pid)
        start = time.monotonic()

        async def sample():
            while True:
                samples.append((time.monotonic() - start, rss_mb(root_pid)))
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample())
        budget = {"left": max_requests}
        await asyncio.gather(*(_client(session, url, start + seconds, budget, goods, bads, classes,
                                       random.Random(rng.random()), tally, latencies) for _ in range(clients)))
        wall = time.monotonic() - start
        sampler.cancel()
    after = rss_mb(root_pid)
    before = samples[0][1]
    mid = min(samples, key=lambda s: abs(s[0] - wall / 2))[1]
    latencies.sort()
    return {"clients": clients, "seconds": round(wall, 1), "requests": sum(tally.values()),
            "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(tally.items(), key=str)},
            "server_errors_valid": sum(n for (k, s), n in tally.items()
                                       if not k.startswith("bad") and not (isinstance(s, int) and s < 500)),
            "server_errors_any": sum(n for (k, s), n in tally.items() if not (isinstance(s, int) and s < 500)),
            "bad_not_4xx": sum(n for (k, s), n in tally.items()
                               if k.startswith("bad") and not (isinstance(s, int) and 400 <= s < 500)),
            "good_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "good_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            "rss_before_mb": round(before, 1), "rss_mid_mb": round(mid, 1), "rss_after_mb": round(after, 1),
            "rss_peak_mb": round(max(s for _, s in samples + [(0, after)]), 1),
            "workers_replaced": len(procs ^ identities(root_pid)), "warmup_s": round(warmed),
            "warmup_requests": sum(warm_tally.values()),
            "warmup_server_errors": sum(n for (k, s), n in warm_tally.items() if not (isinstance(s, int) and s < 500))}


def soak(url: str, root_pid: int, images: list[Path], classes: list[str], clients: int = 64, seconds: float = 60,
         max_requests: int = 50_000, seed: int = 0, warmup: float = 120) -> dict:
    goods = [p.read_bytes() for p in images]
    return asyncio.run(_run(url, root_pid, goods, classes, clients, seconds, max_requests, seed, warmup))


def table(r: dict) -> str:
    lines = [f"{r['clients']} clients, {r['seconds']} s, {r['requests']} requests "
             f"({r['requests'] / r['seconds']:.0f}/s); 5xx on valid requests: {r['server_errors_valid']}; "
             f"5xx or connection errors on any: {r['server_errors_any']}; bad inputs not answered 4xx: "
             f"{r['bad_not_4xx']}; worker processes replaced: {r['workers_replaced']}",
             f"good requests p50 {r['good_p50_ms']:.0f} ms, p99 {r['good_p99_ms']:.0f} ms; server RSS (all processes) "
             f"after a {r['warmup_s']} s warm-up at full load ({r['warmup_requests']} requests, "
             f"{r['warmup_server_errors']} ≥ 500): {r['rss_before_mb']} MB, half-way {r['rss_mid_mb']} MB, "
             f"end {r['rss_after_mb']} MB, peak {r['rss_peak_mb']} MB", "",
             "| request kind | status | count |", "|---|---|---|"]
    for key, n in r["by_kind_status"].items():
        kind, status = key.rsplit(" ", 1) if not key.endswith("message") else (key.split(" ")[0], key.split(" ", 1)[1])
        lines.append(f"| {kind} | {status} | {n} |")
    return "\n".join(lines)


def main() -> None:
    from bench.serve import Server, parse_with_model, service_bench_parser

    ap = service_bench_parser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=50_000)
    args, version, card = parse_with_model(ap)
    srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_ACCESS_LOG": "false"},
                 Path(os.environ.get("TMPDIR", "/tmp")) / "bench-soak.log")
    try:
        assert srv.wait_ready(), "service did not become ready"
        r = soak(srv.url, srv.proc.pid, sorted(args.data.rglob("*.jpg"))[:32], card.classes, args.clients,
                 args.seconds, args.max_requests)
    finally:
        srv.stop()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/soak.py: {card.name} ({card.image_size} px), {stamp}, {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, CPU, load generator on the same cores\n\n{table(r)}\n")
    print(text)
    print(json.dumps(r))
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
