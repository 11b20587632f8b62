"""Really build Dockerfile.serve with buildah on a debootstrap stand-in base (no registry, no Docker engine), run it
with a small model, get a prediction over HTTP, and see it stop on SIGTERM within 10 s."""
from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from helpers import ROOT

from serving.launch import free_port, wait_ready

pytestmark = pytest.mark.slow
DEBIAN = "http://deb.debian.org/debian"
# This sandbox: no systemd for podman's healthcheck timers, and rlimits must stay within the caller's.
RUN_FLAGS = ["--no-healthcheck", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not installed: .ci/setup installs buildah, podman, runc and debootstrap")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    _need("buildah", "podman", "runc", "debootstrap")
    tmp = tmp_path_factory.mktemp("oci")
    store = ["--storage-driver", "vfs", "--root", str(tmp / "storage"), "--runroot", str(tmp / "run")]
    rootfs = ROOT / ".cache" / "standin-rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-venv,python3-pip,ca-certificates",
                        "bookworm", str(rootfs), DEBIAN], check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", *store, "import", "-", "localhost/standin-python:bookworm"], stdin=tar.stdout,
                   check=True, capture_output=True)
    tar.wait()
    build = subprocess.run(
        ["buildah", *store, "bud", "--pull=never", "--isolation", "chroot", "--network", "host", "--format", "docker",
         "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
         "--build-arg", "BASE=localhost/standin-python:bookworm", "-f", "Dockerfile.serve",
         "-t", "localhost/imgcls-serve:test", "."], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield store
    subprocess.run(["podman", *store, "rmi", "-af"], capture_output=True)


def test_image_has_no_torch_and_a_healthcheck(image):
    run = subprocess.run(["podman", *image, "--runtime", "runc", "run", "--rm", *RUN_FLAGS, "--entrypoint", "python3",
                          "localhost/imgcls-serve:test", "-c",
                          "import importlib.util as u; "
                          "print(u.find_spec('torch') is None, u.find_spec('bentoml') is not None)"],
                         capture_output=True, text=True)
    assert run.stdout.split() == ["True", "True"], run.stdout + run.stderr
    inspect = subprocess.run(["podman", *image, "image", "inspect", "--format", "{{.HealthCheck}} {{.User}}",
                              "localhost/imgcls-serve:test"], capture_output=True, text=True)
    assert "readyz" in inspect.stdout and "10001" in inspect.stdout, inspect.stdout


def test_container_serves_and_stops_on_sigterm(image, artifact, data_dir):
    port = free_port()
    name = f"imgcls-test-{port}"
    podman = ["podman", *image, "--runtime", "runc"]
    subprocess.run([*podman, "run", "-d", "--name", name, "--network", "host", *RUN_FLAGS,
                    "-v", f"{artifact}:/model:ro", "-e", "SERVING_MODEL_DIR=/model",
                    "localhost/imgcls-serve:test", "--host", "127.0.0.1", "--port", str(port)],
                   check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(url, 120), "the container never became ready"
        photo = sorted((data_dir / "val" / "bees").iterdir())[0]
        r = httpx.post(url + "/predict", files={"image": photo.open("rb")}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] in ("ants", "bees"), r.text
        start = time.time()
        subprocess.run([*podman, "kill", "-s", "TERM", name], check=True, capture_output=True)
        subprocess.run([*podman, "wait", name], check=True, capture_output=True, timeout=30)
        assert time.time() - start < 10, "the container did not stop within 10 s of SIGTERM"
    finally:
        logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True)
        subprocess.run([*podman, "rm", "-f", name], capture_output=True)
    text = logs.stdout + logs.stderr
    assert "Traceback" not in text, text[-3000:]
    assert "drained (0.0 request(s) still in flight)" in text, "SIGTERM did not go through serving.run's drain"
