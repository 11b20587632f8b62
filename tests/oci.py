"""Build and run OCI images without a Docker engine: buildah and podman on vfs storage, a debootstrap stand-in base
(no registry is reachable). Used by tests/k8s/test_serve_image_{cpu,gpu}.py and
tests/k8s/test_train_image.py."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import ROOT

from serving.launch import free_port, wait_ready

DEBIAN = "http://deb.debian.org/debian"
# This sandbox: no systemd for podman's healthcheck timers, and rlimits must stay within the caller's.
RUN_FLAGS = ["--no-healthcheck", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not installed: .ci/setup installs buildah, podman, runc and debootstrap")


@contextlib.contextmanager
def make_store(tmp: Path, need_gb: float):
    """vfs image storage with the stand-in base imported, removed on leaving (images take GBs). need_gb:
    the most disk the module's build and runs took here, from df during the tests (pip's downloads and unpacking, the
    build's working copy, the committed image, and one more copy per running container: vfs shares nothing)."""
    _need("buildah", "podman", "runc", "debootstrap")
    free_gb = shutil.disk_usage(tmp).free / 1e9
    if free_gb < need_gb:
        pytest.fail(f"{free_gb:.0f} GB free under {tmp}, {need_gb:.0f} GB needed to build and run this image on vfs "
                    "storage: free disk space or point pytest's --basetemp at a larger disk")
    flags = ["--storage-driver", "vfs", "--root", str(tmp / "storage"), "--runroot", str(tmp / "run")]
    rootfs = ROOT / ".cache" / "standin-rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-venv,python3-pip,ca-certificates",
                        "bookworm", str(rootfs), DEBIAN], check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", *flags, "import", "-", "localhost/standin-python:bookworm"], stdin=tar.stdout,
                   check=True, capture_output=True)
    tar.wait()
    try:
        yield flags
    finally:
        subprocess.run(["podman", *flags, "rmi", "-af"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def build(store: list[str], dockerfile: str, tag: str, *args: str) -> None:
    """One layer per build (--layers=false): vfs stores every layer as a full copy of the file system, so a layered
    build of the GPU serving image (several GB, ten steps after its pip layer) filled a CI disk of about 50 GB."""
    start = time.time()
    build_args = [a for kv in ["BASE=localhost/standin-python:bookworm", *args] for a in ("--build-arg", kv)]
    proc = subprocess.run(
        ["buildah", *store, "bud", "--pull=never", "--layers=false", "--isolation", "chroot",
         "--network", "host", "--format", "docker",
         "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
         *build_args, "-f", dockerfile, "-t", tag, "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = subprocess.run(["podman", *store, "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True).stdout.strip()
    print(f"\n{tag}: built in {time.time() - start:.0f} s, {int(size) / 1e9:.2f} GB", file=sys.stderr)



def serving_image_store(variant: str, need_gb: float):
    """A module fixture: Dockerfile.serve's VARIANT built in a store of its own, removed after the module, so that
    the disk holds one serving image at a time."""
    @pytest.fixture(scope="module")
    def image_store(tmp_path_factory):
        with make_store(tmp_path_factory.mktemp(f"oci-serve-{variant}"), need_gb) as store:
            build(store, "Dockerfile.serve", f"localhost/imgcls-serve:{variant}", f"VARIANT={variant}")
            yield store
    return image_store

def run(store: list[str], image: str, *args: str, entrypoint: str | None = None, timeout: float = 600,
        volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["podman", *store, "--runtime", "runc", "run", "--rm", *RUN_FLAGS, "--network", "host"]
    cmd += [x for v in volumes for x in ("-v", v)] + (["--entrypoint", entrypoint] if entrypoint else [])
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)


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
