"""This service against the servers a user would pick instead, serving the same model.onnx, side by side in one run.

python -m bench.peers --model artifacts/hymenoptera [--concurrency 1 8 32 64] [--requests 256] [--rounds 2]

Each peer runs in a virtual environment of its own that this bench makes (under .cache/peers; never a dependency of
the product), with the same onnxruntime, Pillow and numpy as this environment and the same preprocessing
(contract.preprocess, imported from this checkout): bench/peer_apps/*_app.py. Each batches the way its documentation
sets it up (LitServe's and Ray Serve's batch settings, MLServer's adaptive batching; KServe's Python ModelServer has
none of its own, its batcher is a cluster sidecar), with the same batch limit (32) and wait (10 ms) as far as it has
them. The same photos (the test split as shot), the same load generator (bench/serve.py: one connection per client,
the same machine's cores), each server started once per round and the servers alternating over rounds. A request is
what the server's documentation sends: a multipart upload (this service, Ray Serve), base64 in a JSON body
(LitServe, and this service's /predict_base64), base64 in V1 JSON (KServe) or in Open Inference Protocol JSON
(MLServer, and this service's /v2 route). CPU per
image counts every process of the server (user + system); every answer's label is checked against this service's.
"""
from __future__ import annotations

import base64
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version as installed
from pathlib import Path

import httpx
import psutil

from bench.serve import Send, load, multipart, parse_with_model, service_bench_parser
from bench.wrk import Wrk
from serving.launch import Server, free_port

ROOT = Path(__file__).resolve().parents[1]
BATCH, WAIT_S = 32, 0.01
SAME_AS_HERE = ["onnxruntime", "pillow", "numpy", "pydantic"]  # pinned to this environment's versions
TWO_WORKERS = {"SERVING_API_WORKERS": "2"}  # one per core here, onnxruntime on one thread each (the CPU Deployment's)


def v2_json(model: str) -> Send:
    """Open Inference Protocol JSON: one photo as a base64 BYTES input."""
    def send(client: httpx.Client, url: str, blob: bytes) -> httpx.Response:
        return client.post(f"{url}/v2/models/{model}/infer", json={"inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(blob).decode()]}]})
    return send


def base64_json(path: str) -> Send:
    """{"image": base64} in a JSON body: this service's /predict_base64, LitServe's /predict."""
    def send(client: httpx.Client, url: str, blob: bytes) -> httpx.Response:
        return client.post(url + path, json={"image": base64.b64encode(blob).decode()})
    return send


def kserve_v1(client: httpx.Client, url: str, blob: bytes) -> httpx.Response:
    return client.post(url + "/v1/models/imgcls:predict",
                       json={"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]})


def unique(items) -> list:
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def label_of(response: httpx.Response) -> str:
    body = response.json()
    if "label" in body:  # this service's /predict, LitServe, Ray Serve
        return body["label"]
    if "predictions" in body:  # KServe V1
        return body["predictions"][0]["label"]
    return next(o for o in body["outputs"] if o["name"] in ("label", "labels"))["data"][0]  # V2


@dataclass
class Peer:
    venv: str
    packages: list[str]
    app: str  # bench/peer_apps/<app>.py
    send: Send
    args: list[str] = field(default_factory=lambda: [str(BATCH), str(WAIT_S)])
    setup: str = ""  # how its batching is set up, for the table


PEERS = {
    "LitServe 0.2.19": Peer("litserve", ["litserve==0.2.19"], "litserve_app", base64_json("/predict"),
                            setup=f"LitAPI(max_batch_size={BATCH}, batch_timeout={WAIT_S})"),
    # starlette parses forms with python-multipart, which ray[serve] does not install (a user adds it for uploads)
    "Ray Serve 2.60.0": Peer("ray", ["ray[serve]==2.60.0", "python-multipart"], "ray_app", multipart,
                             setup=f"@serve.batch(max_batch_size={BATCH}, batch_wait_timeout_s={WAIT_S}), "
                                   f"max_ongoing_requests={4 * BATCH}"),
    "KServe ModelServer 0.21.0": Peer("kserve", ["kserve==0.21.0"], "kserve_app", kserve_v1, args=[],
                                      setup="none in the Python server (the batcher is a cluster sidecar)"),
    # MLServer 1.7.1's inference worker calls asyncio.get_event_loop() where uvloop 0.22+ raises: the last uvloop
    # it works with is pinned in its environment
    "MLServer 1.7.1": Peer("mlserver", ["mlserver==1.7.1", "uvloop<0.22"], "mlserver_app", v2_json("imgcls"),
                           setup=f"max_batch_size={BATCH}, max_batch_time={WAIT_S}, 1 parallel worker"),
}


def ensure_venv(root: Path, peer: Peer) -> Path:
    """The peer's own environment, made once (pip from PyPI); its onnxruntime, Pillow, numpy and pydantic are the
    versions this environment has."""
    python = root / peer.venv / "bin" / "python"
    marker = root / peer.venv / ".imgcls-ready"
    wanted = " ".join(peer.packages + pinned())
    if marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root / peer.venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted.split()], check=True)
    marker.write_text(wanted)
    return python


def pinned() -> list[str]:
    """SAME_AS_HERE at this environment's versions. onnxruntime is the CPU package of the same version where this
    environment has onnxruntime-gpu instead (the dev environment: the peers are compared on the CPU)."""
    out = []
    for package in SAME_AS_HERE:
        for source in (package, f"{package}-gpu") if package == "onnxruntime" else (package,):
            if _has(source):
                out.append(f"{package}=={installed(source)}")
                break
    return out


def _has(package: str) -> bool:
    try:
        installed(package)
        return True
    except Exception:
        return False


class PeerServer:
    """A peer on a free 127.0.0.1 port in its own session; stopped with every process it started, by PID."""

    def __init__(self, python: Path, peer: Peer, version: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), IMGCLS_MODEL_DIR=str(version), RAY_USAGE_STATS_ENABLED="0",
                   ORT_DISABLE_TELEMETRY="1")
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(python), str(ROOT / "bench" / "peer_apps" / f"{peer.app}.py"), str(self.port),
                                      *peer.args], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        try:
            procs = self.processes()
        except psutil.NoSuchProcess:
            procs = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=10)
            if not alive:
                break
        self.log.close()


def wait_answering(url: str, send: Send, blob: bytes, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline, last = time.time() + timeout, "no answer"
    with httpx.Client(timeout=30) as client:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                r = send(client, url, blob)
                if r.status_code == 200:
                    return
                last = f"{r.status_code}: {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s; last: {last}")


def cpu_ms(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            total += sum(p.cpu_times()[:2]) * 1000
        except psutil.NoSuchProcess:
            pass
    return total


def measure(url: str, procs, send: Send, blobs: list[bytes], concurrencies: list[int], requests: int,
            ours: bool, client: str = "python") -> dict[int, dict]:
    rows = {}
    for c in concurrencies:
        n = max(requests, 4 * c)
        if client == "wrk":
            with Wrk(send, blobs) as generator:
                rate = generator.warm(url, c)
                tree = procs()
                before = cpu_ms(tree)
                row = generator.measure(url, c, n, rate, batches=ours)
                row["cpu_ms"] = (cpu_ms(tree) - before) / row["served"]
        else:
            load(url, blobs, c, 2 * c, send, batches=ours)  # warm-up
            tree = procs()  # the processes now (Ray and MLServer start workers lazily)
            before = cpu_ms(tree)
            row = load(url, blobs, c, n, send, batches=ours)
            row["cpu_ms"] = (cpu_ms(tree) - before) / n
        rows[c] = row
    return rows


def labels(url: str, send: Send, blobs: list[bytes]) -> list[str]:
    with httpx.Client(timeout=60) as client:
        return [label_of(send(client, url, b)) for b in blobs]


def main() -> None:
    ap = service_bench_parser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=256, help="per concurrency (at least 4 x concurrency)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    ap.add_argument("--venvs", type=Path, default=ROOT / ".cache" / "peers")
    ap.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="the load generator: python (bench/serve.py's, ~1.6 core-ms a request on the servers' "
                         "cores) or wrk (bench/wrk.py: the same requests from C, apt-get install wrk)")
    args, version, card = parse_with_model(ap)
    version = version.resolve()
    blobs = [p.read_bytes() for p in sorted(args.data.rglob("*.jpg"))[:64]]
    pythons = {name: ensure_venv(args.venvs, PEERS[name]) for name in args.peers}
    fp32 = {"SERVING_PRECISION": "fp32"}  # model.onnx, as every peer runs it
    ours = {  # name -> (settings, request); one server start per distinct settings
        "this service, /predict (multipart), 1 API worker": (fp32, multipart),
        "this service, /predict_base64 (JSON), 1 API worker": (fp32, base64_json("/predict_base64")),
        "this service, /v2 (OIP JSON, base64), 1 API worker": (fp32, v2_json(card.name)),
        "this service, /predict, 2 API workers (k8s/serving/config.yaml)": (fp32 | TWO_WORKERS, multipart),
        "this service, /predict, 2 API workers, precision auto: int8 (not the same model file)":
            ({"SERVING_PRECISION": "auto"} | TWO_WORKERS, multipart),
    }
    runs: dict[str, list[dict]] = {name: [] for name in [*ours, *args.peers]}
    expected = None
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    for _ in range(args.rounds):
        for env in unique(settings for settings, _ in ours.values()):
            srv = Server({"SERVING_MODEL_DIR": str(version), "SERVING_MAX_BATCH_SIZE": str(BATCH), **env},
                         logs / "bench-peers-ours.log")
            try:
                assert srv.wait_ready(), "the service did not become ready"
                tree = lambda: [psutil.Process(srv.proc.pid), *psutil.Process(srv.proc.pid).children(recursive=True)]  # noqa: E731
                for name, (settings, send) in ours.items():
                    if settings != env:
                        continue
                    got = labels(srv.url, send, blobs)
                    expected = expected or got
                    if settings.get("SERVING_PRECISION") == "fp32":
                        assert got == expected, f"{name} answers differently"
                    runs[name].append(measure(srv.url, tree, send, blobs, args.concurrency, args.requests, True,
                                               args.client))
                    print(name, {c: round(r["img_s"], 1) for c, r in runs[name][-1].items()}, flush=True)
            finally:
                srv.stop()
        for name in args.peers:
            peer = PEERS[name]
            ps = PeerServer(pythons[name], peer, version, logs / f"bench-peers-{peer.venv}.log")
            try:
                wait_answering(ps.url, peer.send, blobs[0], ps.proc)
                got = labels(ps.url, peer.send, blobs)
                assert got == expected, f"{name} answers differently: {sum(a != b for a, b in zip(got, expected))}"
                runs[name].append(measure(ps.url, ps.processes, peer.send, blobs, args.concurrency, args.requests,
                                          False, args.client))
                print(name, {c: round(r["img_s"], 1) for c, r in runs[name][-1].items()}, flush=True)
            finally:
                ps.stop()
    print(table(args, card, runs))


def table(args, card, runs: dict[str, list[dict]]) -> str:
    head = ("| server | batching | c | img/s (median) | this service's /predict / it | p50 ms | p99 ms | "
            "CPU core-ms per image (server) |\n|---|---|---|---|---|---|---|---|")
    setups = {name: PEERS[name].setup for name in PEERS} | {n: "adaptive (serving.coalesce)" for n in runs
                                                             if n.startswith("this service")}
    first = next(iter(runs))
    lines = []
    for c in args.concurrency:
        ours = statistics.median(r[c]["img_s"] for r in runs[first])
        for name, rounds in runs.items():
            m = {k: statistics.median(r[c][k] for r in rounds) for k in ("img_s", "p50", "p99", "cpu_ms")}
            lines.append(f"| {name} | {setups[name]} | {c} | {m['img_s']:.1f} | {ours / m['img_s']:.2f} | "
                         f"{m['p50']:.0f} | {m['p99']:.0f} | {m['cpu_ms']:.1f} |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n### bench/peers.py: {card.name} ({card.image_size} px), {args.requests} requests per concurrency x "
            f"{args.rounds} rounds, {stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU, load "
            f"generator {args.client} on the same cores\n\n" + "\n".join([head, *lines]) + "\n")
    with open(args.results, "a") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    main()
