"""Where the service's CPU goes, per image, and service settings or checkouts compared, in one run.

python -m bench.serve_cpu --model artifacts/hymenoptera [--concurrency 1 8 32 64] [--requests 640] [--rounds 2]
python -m bench.serve_cpu --variants default --photo-sizes "as shot (~0.2 MP)" "12 MP"   # by photo size
python -m bench.serve_cpu --variants default --against /tmp/old   # also the service of another checkout

For each variant (SERVING_* settings, or another checkout's service with default settings) the real service is
started once per round, loaded with real JPEGs by bench/serve.py's client at each concurrency and photo size, and
the CPU time of every process is read before and after: the load generator, the HTTP-facing process (decoding,
multipart, JSON and, since the one-process layout, onnxruntime) and, in checkouts with the two-service layout, the
Model service. Variants alternate over rounds so that drift on a shared machine hits all of them. With C cores,
img/s can be at most C * 1000 / (core-ms per image), which says how far any setting can go and what the service
costs beyond onnxruntime itself.

The same run also measures the two costs no service can avoid, in this process: decoding the same photos
(contract.preprocess, one thread) and onnxruntime alone at batch 1-32 with the service's session settings, in every
round. The overhead column is everything else the server spends per image: its processes - decoding - onnxruntime
alone at the variant's mean batch (interpolated). In the service onnxruntime shares the cores with decoding, which
costs it CPU of its own (threads that wait and wake); the next column also subtracts that cost: onnxruntime at batch
8 beside a process that decodes the same photos nonstop, minus onnxruntime alone at batch 8. The event loops are the
processes' main threads (HTTP, multipart, (de)serialisation, batching): overhead whatever the machine does.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from bench import wrk
from bench.decode import SIZES as PHOTO_SIZES
from bench.decode import reencoded
from bench.serve import Server, load, parse_with_model, run_for, service_bench_parser  # the same client, start, loop
from contract.card import load_card
from contract.precision import INT8_VARIANTS
from contract.preprocess import preprocess
from serving.runtime import OnnxClassifier
from serving.settings import load_settings

AS_SHOT = "as shot (~0.2 MP)"
SHARED = {"SERVING_RUN_MODE": "shared"}
VARIANTS = {
    "default (run_mode adaptive, spinning in_runs; fp32)": {},
    # the default before run_mode existed: every run on all threads, one at a time, the threads sleeping when idle
    "shared runs, spinning off": {**SHARED, "SERVING_SPINNING": "off"},
    "shared runs, spinning in_runs": SHARED,
    "2 runs in flight": {**SHARED, "SERVING_MODEL_CALLS_IN_FLIGHT": "2", "SERVING_SPINNING": "off"},
    # no intra-op barrier to wait at: each run on its own thread, the cores shared between runs instead
    "2 runs in flight, 1 onnxruntime thread each": {**SHARED, "SERVING_MODEL_CALLS_IN_FLIGHT": "2",
                                                    "SERVING_INTRA_OP_THREADS": "1"},
    "no batching (every request runs alone)": {"SERVING_BATCHING": "false"},
    "access log off": {"SERVING_ACCESS_LOG": "false"},
    "2 API workers": {"SERVING_API_WORKERS": "2"},
    "1 onnxruntime thread": {"SERVING_INTRA_OP_THREADS": "1"},
    "onnxruntime threads always spin": {"SERVING_SPINNING": "always"},
    "onnxruntime threads never spin": {"SERVING_SPINNING": "off"},
    "1 decode thread": {"SERVING_DECODE_THREADS": "1"},
    "precision=fp32 (model.onnx)": {"SERVING_PRECISION": "fp32"},
    "precision=int8 (model.int8.onnx, 8-bit weights)": {"SERVING_PRECISION": "int8"},
    "precision=int8_7bit (model.int8-7bit.onnx)": {"SERVING_PRECISION": "int8_7bit"},
}
# model.onnx unless a variant says otherwise: `auto` picks int8 on CPU where the artifact has it (and older checkouts
# chose fp32 wherever onnxruntime-gpu is installed), which would compare two models instead of two services
FIXED = {"SERVING_PRECISION": "fp32"}
SERVICES = ("ImageClassifier", "Model")  # the HTTP-facing service; Model only in the two-service layout (older code)


def cpu_ms(procs: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) * 1000 for p in procs]


def event_loop_ms(procs: list[psutil.Process]) -> float:
    """CPU ms of the processes' main threads, where uvicorn runs the event loop (HTTP, multipart, (de)serialisation,
    BentoML's dispatcher); the rest of a process's time is its worker threads' (decoding, onnxruntime), also those
    that have ended."""
    return sum((t.user_time + t.system_time) * 1000 for p in procs for t in p.threads() if t.id == p.pid)


def python_warm(url: str, blobs: list[bytes], concurrency: int) -> None:
    load(url, blobs, concurrency, 2 * concurrency)  # sessions, thread pools, batch sizes


def python_run(url: str, blobs: list[bytes], concurrency: int, requests: int, _warm: None) -> dict:
    """bench/serve.py's client, in this process: its CPU is this process's."""
    start = time.process_time()
    row = load(url, blobs, concurrency, requests)
    return row | {"client_ms": (time.process_time() - start) * 1000 / requests}


# the load generators: (warm-up, whose answer the run takes; the measured run)
CLIENTS = {"python": (python_warm, python_run), "wrk": (wrk.warm, wrk.run)}


def measure(version: Path, env: dict, photo_sets: dict[str, list[bytes]], concurrencies: list[int],
            requests: int, code: Path | None = None, client: str = "python") -> dict[tuple[str, int], dict]:
    """One server start, loaded with each photo set at each concurrency: a row per (photos, concurrency).
    code: a checkout whose serving/ runs instead of this one (the same venv); client: a key of CLIENTS."""
    srv = Server({"SERVING_MODEL_DIR": str(version.resolve()), "SERVING_MAX_BATCH_SIZE": "64", **FIXED, **env},
                 Path(os.environ.get("TMPDIR", "/tmp")) / "bench-serve-cpu.log", cwd=code)
    rows = {}
    try:
        assert srv.wait_ready(), "service did not become ready"
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        by_name = {name: [p for p in workers if f"--service-name {name}" in " ".join(p.cmdline())]
                   for name in SERVICES}
        for photos, blobs in photo_sets.items():
            for c in concurrencies:
                n = max(requests, 4 * c)
                warm, run = CLIENTS[client]
                warmed = warm(srv.url, blobs, c)
                loops0 = {name: event_loop_ms(ps) for name, ps in by_name.items()}
                before = {name: sum(cpu_ms(ps)) for name, ps in by_name.items()}
                row = run(srv.url, blobs, c, n, warmed)
                after = {name: sum(cpu_ms(ps)) for name, ps in by_name.items()}
                loops1 = {name: event_loop_ms(ps) for name, ps in by_name.items()}
                n = row.get("served", n)  # wrk runs for a time: the images the server ran in the window
                for name in by_name:
                    row[f"{name}_ms"] = (after[name] - before[name]) / n
                    row[f"{name}_loop_ms"] = (loops1[name] - loops0[name]) / n
                rows[(photos, c)] = row
    finally:
        srv.stop()
    return rows


def checkout_name(path: Path) -> str:
    rev = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
    return f"{path} ({rev.stdout.strip() or 'not a git checkout'})"


def decode_ms(version: Path, blobs: list[bytes], repeat: int = 3) -> float:
    """CPU core-ms per image of decode + resize + crop, as ImageClassifier does it (one thread per image)."""
    spec = load_card(version).spec
    start = time.process_time()
    for _ in range(repeat):
        for b in blobs:
            preprocess(b, spec, 10**9)
    return (time.process_time() - start) * 1000 / (repeat * len(blobs))


def _decode_nonstop(stop, version: Path, blobs: list[bytes]) -> None:
    spec = load_card(version).spec
    while not stop.is_set():
        for b in blobs:
            preprocess(b, spec, 10**9)


def onnxruntime_beside_decoding_ms(version: Path, blobs: list[bytes], batch: int = 8) -> float:
    """onnxruntime_ms at one batch size while another process decodes photos, as ImageClassifier does under load."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    decoder = ctx.Process(target=_decode_nonstop, args=(stop, version, blobs))
    decoder.start()
    try:
        time.sleep(1.0)  # the decoder running before the clock starts
        return onnxruntime_ms(version, blobs, (batch,), seconds=4.0)[batch]
    finally:
        stop.set()
        decoder.join()


def onnxruntime_ms(version: Path, blobs: list[bytes], batches=(1, 2, 4, 8, 16, 32), seconds: float = 2.0) -> dict:
    """CPU core-ms per image of onnxruntime alone (all its threads) by batch size, with the session settings the
    service uses (threads = the CPU allotment, its spinning setting)."""
    card, settings = load_card(version), load_settings()
    clf = OnnxClassifier(version / "model.onnx", len(card.classes), card.image_size, "cpu",
                         settings.intra_op_threads, settings.inter_op_threads, settings.spinning)
    arrays = np.stack([preprocess(b, card.spec, 10**9) for b in blobs[:32]])
    cost = {}
    for batch in batches:
        images, _, cpu = run_for(clf, np.resize(arrays, (batch, *arrays.shape[1:])), seconds)
        cost[batch] = cpu * 1000 / images
    return cost


def servable(card, env: dict, name: str) -> bool:
    """False (and says so) for a precision whose file the artifact does not ship: that service would not start."""
    wanted = env.get("SERVING_PRECISION", "fp32")
    shipped = wanted in ("fp32", "auto") or wanted in card.variants or (
        wanted == "int8" and any(k in card.variants for k in INT8_VARIANTS))
    if not shipped:
        print(f"left out: {name}: {card.name} {card.version} ships no {wanted} file "
              f"({card.variants_refused.get(wanted, 'not exported')})", flush=True)
    return shipped


def main() -> None:
    ap = service_bench_parser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32])
    ap.add_argument("--requests", type=int, default=640, help="per concurrency (at least 4 x concurrency)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client", choices=list(CLIENTS), default="python",
                    help="the load generator: python (bench/serve.py's, ~1.6 core-ms a request on the server's cores) "
                         "or wrk (bench/wrk.py: C, apt-get install wrk)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                    help=f"the settings variants to compare (default: all); 'default' for the first: {list(VARIANTS)}")
    ap.add_argument("--against", nargs="+", type=Path, default=[],
                    help="other checkouts (git worktree add DIR COMMIT): their service with default settings, in the "
                         "same rounds, to compare code before and after a change in one run")
    ap.add_argument("--photo-sizes", nargs="+", choices=list(PHOTO_SIZES), default=[AS_SHOT],
                    help="the photos sent, as shot or re-encoded at phone sizes (16 photos each past as shot)")
    args, version, card = parse_with_model(ap)
    paths = sorted(args.data.rglob("*.jpg"))
    photo_sets = {size: [p.read_bytes() for p in paths[:64]] if size == AS_SHOT else
                  reencoded(paths[:16], PHOTO_SIZES[size]) for size in args.photo_sizes}
    names = [next(iter(VARIANTS)) if v == "default" else v for v in args.variants]
    cases = {name: (VARIANTS[name], None) for name in names if servable(card, VARIANTS[name], name)}
    cases |= {f"default settings, code of {checkout_name(d)}": ({}, d) for d in args.against}
    runs = {name: [] for name in cases}
    ort_rounds, beside_rounds = [], []
    as_shot = photo_sets.get(AS_SHOT) or next(iter(photo_sets.values()))
    for _ in range(args.rounds):
        for name, (env, code) in cases.items():
            runs[name].append(measure(version, env, photo_sets, args.concurrency, args.requests, code,
                                       args.client))
            print(name, {k: f"{r['img_s']:.1f} img/s" for k, r in runs[name][-1].items()}, flush=True)
        ort_rounds.append(onnxruntime_ms(version, as_shot))  # every round: it drifts with the machine as much
        beside_rounds.append(onnxruntime_beside_decoding_ms(version, as_shot))
    ort_ms = {b: statistics.median(r[b] for r in ort_rounds) for b in ort_rounds[0]}
    contention = statistics.median(beside_rounds) - ort_ms[8]  # what sharing the cores costs onnxruntime per image
    cores = len(os.sched_getaffinity(0))
    decode = {size: decode_ms(version, blobs) for size, blobs in photo_sets.items()}
    first = next(iter(cases))
    head = ("| variant | photos | c | img/s (median) | / first | p50 ms | p99 ms | mean batch | images per Model call "
            "| client | ImageClassifier | Model | all | img/s bound = cores x 1000 / all | decoding alone | "
            "onnxruntime alone | overhead | overhead beyond onnxruntime's contention | event loops |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = []
    for photos in photo_sets:
        for c in args.concurrency:
            base = statistics.median(r[(photos, c)]["img_s"] for r in runs[first])
            for name, rounds in runs.items():
                rows = [r[(photos, c)] for r in rounds]
                m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                server = m["ImageClassifier_ms"] + m["Model_ms"]
                total = m["client_ms"] + server
                alone = float(np.interp(m["mean_batch"], list(ort_ms), list(ort_ms.values())))
                over = server - decode[photos] - alone
                model = f"{m['Model_ms']:.1f}" if m["Model_ms"] else "none"
                per_call = "-" if np.isnan(m["per_call"]) else f"{m['per_call']:.1f}"
                lines.append(f"| {name} | {photos} | {c} | {m['img_s']:.1f} | {m['img_s'] / base:.2f} | "
                             f"{m['p50']:.0f} | {m['p99']:.0f} | {m['mean_batch']:.1f} | {per_call} | "
                             f"{m['client_ms']:.1f} | {m['ImageClassifier_ms']:.1f} | {model} | {total:.1f} | "
                             f"{cores * 1000 / total:.0f} | {decode[photos]:.1f} | {alone:.1f} | {over:.1f} | "
                             f"{over - contention:.1f} | {m['ImageClassifier_loop_ms'] + m['Model_loop_ms']:.1f} |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/serve_cpu.py: {card.name} ({card.image_size} px), c = {args.concurrency}, "
            f"{args.requests} requests x {args.rounds} rounds, load generator {args.client}, {stamp}, "
            f"{platform.machine()}, {cores} cores, CPU\n\n"
            "CPU core-ms per image by process (user + system), median over rounds; onnxruntime alone by batch "
            "(median over rounds): "
            + ", ".join(f"{b}: {v:.1f}" for b, v in ort_ms.items())
            + f"; at batch 8 beside a decoding process {statistics.median(beside_rounds):.1f}\n\n"
            + "\n".join([head, *lines]) + "\n")
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
