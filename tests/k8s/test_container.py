"""Really build both variants of Dockerfile.serve with buildah (tests/oci.py: no registry, no Docker engine) and run
them. Build times and image sizes are printed (pytest -s) and quoted in the README.

- cpu: predicts over HTTP, stops within 10 s of SIGTERM after draining, holds no CUDA library at all.
- gpu: every library the CUDA provider and cuDNN need resolves except the driver's libcuda.so.1; with no GPU here it
  serves on CPU and its log says why.
"""
from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from oci import RUN_FLAGS, build, make_store, run

from serving.launch import free_port, wait_ready

pytestmark = pytest.mark.slow
SERVE = {"cpu": "localhost/imgcls-serve:cpu", "gpu": "localhost/imgcls-serve:gpu"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from make_store(tmp_path_factory.mktemp("oci-serve"))


@pytest.fixture(scope="module")
def serve_images(store):
    for variant, tag in SERVE.items():
        build(store, "Dockerfile.serve", tag, f"VARIANT={variant}")
    return store


# ---- serving, cpu ------------------------------------------------------------------------------------------------
def test_cpu_image_has_no_cuda_library_no_torch_and_a_healthcheck(serve_images):
    probe = run(serve_images, SERVE["cpu"], "-c", """
import glob, importlib.util as u, json, onnxruntime as ort
libs = [p for pat in ('libcud*', 'libcublas*', 'libcurand*', 'libcufft*', 'libnvrtc*', '*providers_cuda*')
        for root in ('/opt/venv', '/usr/lib', '/usr/local') for p in glob.glob(f'{root}/**/{pat}', recursive=True)]
print(json.dumps([libs, ort.get_available_providers(), u.find_spec('torch') is None, u.find_spec('bentoml') is None]))
""", entrypoint="python3")
    libs, providers, no_torch, no_bentoml = json.loads(probe.stdout)
    assert libs == [] and "CUDAExecutionProvider" not in providers, (libs, providers)
    assert no_torch and not no_bentoml
    inspect = subprocess.run(["podman", *serve_images, "image", "inspect", "--format", "{{.HealthCheck}} {{.User}}",
                              SERVE["cpu"]], capture_output=True, text=True)
    assert "readyz" in inspect.stdout and "10001" in inspect.stdout, inspect.stdout


class ServingContainer:
    """The serving image running on a free port with the test model; after the block, `log` holds its output."""

    def __init__(self, store: list[str], image: str, artifact):
        port = free_port()
        self.url, self.name, self.log = f"http://127.0.0.1:{port}", f"imgcls-test-{port}", ""
        self.podman = ["podman", *store, "--runtime", "runc"]
        subprocess.run([*self.podman, "run", "-d", "--name", self.name, "--network", "host", *RUN_FLAGS,
                        "-v", f"{artifact}:/model:ro", "-e", "SERVING_MODEL_DIR=/model",
                        image, "--host", "127.0.0.1", "--port", str(port)], check=True, capture_output=True)

    def __enter__(self) -> ServingContainer:
        return self

    def __exit__(self, *exc) -> None:
        logs = subprocess.run([*self.podman, "logs", self.name], capture_output=True, text=True)
        subprocess.run([*self.podman, "rm", "-f", self.name], capture_output=True)
        self.log = logs.stdout + logs.stderr

    def predicts(self, photo) -> httpx.Response:
        assert wait_ready(self.url, 180), "the container never became ready"
        r = httpx.post(self.url + "/predict", files={"image": photo.open("rb")}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] in ("ants", "bees"), r.text
        return r


def test_cpu_container_serves_and_stops_on_sigterm(serve_images, artifact, data_dir):
    with ServingContainer(serve_images, SERVE["cpu"], artifact) as box:
        box.predicts(sorted((data_dir / "val" / "bees").iterdir())[0])
        start = time.time()
        subprocess.run([*box.podman, "kill", "-s", "TERM", box.name], check=True, capture_output=True)
        subprocess.run([*box.podman, "wait", box.name], check=True, capture_output=True, timeout=30)
        assert time.time() - start < 10, "the container did not stop within 10 s of SIGTERM"
    assert "Traceback" not in box.log, box.log[-3000:]
    assert "drained (0.0 request(s) still in flight)" in box.log, "SIGTERM did not go through serving.run's drain"
    assert "CUDA not used (this onnxruntime has no CUDA provider" in box.log, box.log[-3000:]


# ---- serving, gpu ------------------------------------------------------------------------------------------------
GPU_LIBRARIES = """
import ctypes, glob, os, subprocess, onnxruntime as ort
ort.preload_dlls()
provider = os.path.join(os.path.dirname(ort.__file__), 'capi', 'libonnxruntime_providers_cuda.so')
try:
    ctypes.CDLL(provider); print('LOADED')
except OSError as exc:
    print('LOAD', exc)
dirs = sorted({os.path.dirname(p) for p in glob.glob('/opt/venv/lib/python3*/site-packages/nvidia/**/lib*.so*',
                                                     recursive=True)})
libs = [provider] + [p for d in dirs for p in glob.glob(d + '/lib*.so*')]
env = dict(os.environ, LD_LIBRARY_PATH=':'.join(dirs))
missing = set()
for lib in libs:
    out = subprocess.run(['ldd', lib], capture_output=True, text=True, env=env).stdout
    missing |= {line.split()[0] for line in out.splitlines() if 'not found' in line}
print('NAMES', ' '.join(sorted(os.path.basename(p) for p in libs)))
print('MISSING', ' '.join(sorted(missing)))
"""


def test_gpu_image_resolves_every_cuda_library_but_the_driver(serve_images):
    probe = run(serve_images, SERVE["gpu"], "-c", GPU_LIBRARIES, entrypoint="python3")
    lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines() if " " in line)
    assert lines.get("MISSING") == "libcuda.so.1", probe.stdout + probe.stderr[-2000:]
    # the provider's own dependencies, once preload_dlls made NVIDIA's wheels findable: only the driver is absent
    assert lines.get("LOAD", "").startswith("libcuda.so.1: cannot open shared object file"), probe.stdout
    for needed in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudnn.so.9"):
        assert needed in lines["NAMES"].split(), (needed, lines["NAMES"])
    assert "torch" not in probe.stdout


def test_gpu_image_without_a_gpu_serves_on_cpu_and_says_why(serve_images, artifact, data_dir):
    with ServingContainer(serve_images, SERVE["gpu"], artifact) as box:
        box.predicts(sorted((data_dir / "val" / "ants").iterdir())[0])
        assert 'provider="CPUExecutionProvider"' in httpx.get(box.url + "/metrics").text
    assert "CUDA not used (libcuda.so.1: cannot open shared object file" in box.log, box.log[-3000:]
    assert "serving on CPUExecutionProvider" in box.log and "Traceback" not in box.log, box.log[-3000:]
