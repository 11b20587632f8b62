"""The cpu serving image, built for real (tests/oci.py): it predicts over HTTP, stops within 10 s of SIGTERM after
draining, and holds no CUDA library at all. Its build time and size are printed (pytest -s) and quoted in the README."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
from oci import Image, ServingContainer, image_fixture, run

pytestmark = pytest.mark.slow
IMAGE = "localhost/imgcls-serve:cpu"
IMAGE_BUILD = Image("serve-cpu", "Dockerfile.serve", IMAGE, ("VARIANT=cpu",), need_gb=3)
image_store = image_fixture(IMAGE_BUILD)


def test_cpu_image_has_no_cuda_library_no_torch_and_a_healthcheck(image_store):
    probe = run(image_store, IMAGE, "-c", """
import glob, importlib.util as u, json, onnxruntime as ort
libs = [p for pat in ('libcud*', 'libcublas*', 'libcurand*', 'libcufft*', 'libnvrtc*', '*providers_cuda*')
        for root in ('/opt/venv', '/usr/lib', '/usr/local') for p in glob.glob(f'{root}/**/{pat}', recursive=True)]
print(json.dumps([libs, ort.get_available_providers(), u.find_spec('torch') is None, u.find_spec('bentoml') is None]))
""", entrypoint="python3")
    libs, providers, no_torch, no_bentoml = json.loads(probe.stdout)
    assert libs == [] and "CUDAExecutionProvider" not in providers, (libs, providers)
    assert no_torch and not no_bentoml
    inspect = subprocess.run(["podman", *image_store, "image", "inspect", "--format", "{{.HealthCheck}} {{.User}}",
                              IMAGE], capture_output=True, text=True)
    assert "readyz" in inspect.stdout and "10001" in inspect.stdout, inspect.stdout


def test_cpu_container_serves_and_stops_on_sigterm(image_store, artifact, data_dir):
    with ServingContainer(image_store, IMAGE, artifact) as box:
        box.predicts(sorted((data_dir / "val" / "bees").iterdir())[0])
        start = time.time()
        subprocess.run([*box.podman, "kill", "-s", "TERM", box.name], check=True, capture_output=True)
        subprocess.run([*box.podman, "wait", box.name], check=True, capture_output=True, timeout=30)
        assert time.time() - start < 10, "the container did not stop within 10 s of SIGTERM"
    assert "Traceback" not in box.log, box.log[-3000:]
    assert "drained (0.0 request(s) still in flight)" in box.log, "SIGTERM did not go through serving.run's drain"
    assert "CUDA not used (this onnxruntime has no CUDA provider" in box.log, box.log[-3000:]
