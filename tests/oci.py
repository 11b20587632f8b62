"""Build and run OCI images without a Docker engine: buildah and podman on vfs storage, a debootstrap stand-in base
(no registry is reachable). Used by tests/k8s/test_container.py and tests/k8s/test_train_image.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

DEBIAN = "http://deb.debian.org/debian"
# This sandbox: no systemd for podman's healthcheck timers, and rlimits must stay within the caller's.
RUN_FLAGS = ["--no-healthcheck", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not installed: .ci/setup installs buildah, podman, runc and debootstrap")


def make_store(tmp: Path):
    """vfs image storage with the stand-in base imported; a generator: removed afterwards (images take GBs)."""
    _need("buildah", "podman", "runc", "debootstrap")
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
    yield flags
    subprocess.run(["podman", *flags, "rmi", "-af"], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


def build(store: list[str], dockerfile: str, tag: str, *args: str, layers: bool = True) -> None:
    """layers=True: builds in one storage share their common layers (the serving variants' dependency layer). vfs
    stores every layer as a full copy, so an image of several GB is built in one layer (layers=False)."""
    start = time.time()
    build_args = [a for kv in ["BASE=localhost/standin-python:bookworm", *args] for a in ("--build-arg", kv)]
    proc = subprocess.run(
        ["buildah", *store, "bud", "--pull=never", f"--layers={str(layers).lower()}", "--isolation", "chroot",
         "--network", "host", "--format", "docker",
         "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
         *build_args, "-f", dockerfile, "-t", tag, "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = subprocess.run(["podman", *store, "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True).stdout.strip()
    print(f"\n{tag}: built in {time.time() - start:.0f} s, {int(size) / 1e9:.2f} GB", file=sys.stderr)


def run(store: list[str], image: str, *args: str, entrypoint: str | None = None, timeout: float = 600,
        volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["podman", *store, "--runtime", "runc", "run", "--rm", *RUN_FLAGS, "--network", "host"]
    cmd += [x for v in volumes for x in ("-v", v)] + (["--entrypoint", entrypoint] if entrypoint else [])
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)


