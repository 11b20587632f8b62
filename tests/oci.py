"""Build and run OCI images without a Docker engine: buildah and podman on overlay (else vfs) storage, a debootstrap
stand-in base (no registry is reachable). Used by tests/k8s/test_serve_image_{cpu,gpu}.py and
tests/k8s/test_train_image.py, whose images build in the background from the start of the session (Builds)."""
from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import ROOT

from serving.launch import free_port, wait_ready

BASE = "localhost/standin-python:bookworm"
# This sandbox: no systemd for podman's healthcheck timers, and rlimits must stay within the caller's.
RUN_FLAGS = ["--no-healthcheck", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not installed: .ci/setup installs buildah, podman, runc and debootstrap")


def open_store(folder: Path, need_gb: float) -> list[str]:
    """Image storage under `folder` with the stand-in base imported (images take GBs): overlay where this kernel
    mounts it, else vfs. need_gb: the most disk the image's build and its module's runs took here on vfs, from df
    during the tests (pip's downloads and unpacking, the build's working copy, the committed image, and one more
    copy per running container: vfs shares nothing; overlay needs less)."""
    _need("buildah", "podman", "runc", "debootstrap")
    folder.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < need_gb:
        pytest.fail(f"{free_gb:.0f} GB free under {folder}, {need_gb:.0f} GB needed to build and run this image on "
                    "vfs storage: free disk space or point pytest's --basetemp at a larger disk")
    subprocess.run(["bash", str(ROOT / ".ci" / "standin-rootfs")], check=True, capture_output=True)  # once: setup
    for driver in ("overlay", "vfs"):
        # podman refuses an overlay runroot path over 50 characters; pytest's temporary folders are longer
        runroot = tempfile.mkdtemp(prefix="podman-run-")
        flags = ["--storage-driver", driver, "--root", str(folder / driver), "--runroot", runroot]
        if _import_base(flags):
            return flags
        remove_store(flags, folder / driver)
    pytest.fail("podman could neither import nor run the stand-in base image, on overlay or on vfs storage")


def _import_base(flags: list[str]) -> bool:
    """The stand-in base imported, and a container of it runs: overlay storage copies nothing per container or
    layer (vfs copies the whole file system each time, GBs for the GPU images), but a kernel without overlay
    mounts for this user refuses it here, at the first run."""
    rootfs = ROOT / ".cache" / "standin-rootfs"
    pipe = f"tar -C {shlex.quote(str(rootfs))} -c . | {shlex.join(['podman', *flags, 'import', '-', BASE])}"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, text=True)
    if done.returncode == 0:
        done = run(flags, BASE, "-c", "pass", entrypoint="python3", timeout=120)
    if done.returncode != 0:
        print(f"\npodman {flags[1]} storage refused: {done.stderr.strip()[-500:]}", file=sys.stderr)
    return done.returncode == 0


def remove_store(store: list[str], folder: Path) -> None:
    subprocess.run(["podman", *store, "rmi", "-af"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(store[store.index("--runroot") + 1], ignore_errors=True)


def local_indexes(folder: Path) -> list[str]:
    """buildah volume flags that give pip inside a build this machine's package mirrors on disk (the file:// indexes
    in the host's pip configuration) as extra indexes beside PyPI, as the host's pip has them: pip takes the last
    index's copy of a file several offer, so torch and the CUDA wheels (about 4 GB for the training image) come off
    the disk, not over the network, and the rest from PyPI as before. Without such mirrors, no flags."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    indexes = [url for url in re.findall(r"file://(/[^\s']+)", config) if Path(url).is_dir()]
    if not indexes:
        return []
    conf = folder / "pip.conf"
    conf.write_text(f"[global]\nextra-index-url = {' '.join(f'file://{i}' for i in indexes)}\n")
    mirrors = sorted({str(Path(i).parent) for i in indexes})  # an index's pages link to ../../files
    return [a for m in mirrors for a in ("-v", f"{m}:{m}:ro")] + ["-v", f"{conf}:/etc/pip.conf:ro"]


def build(store: list[str], dockerfile: str, tag: str, *args: str) -> str:
    """One layer per build (--layers=false): vfs stores every layer as a full copy of the file system, so a layered
    build of the GPU serving image (several GB, ten steps after its pip layer) filled a CI disk of about 50 GB.
    Returns a line with the build's time and the image's size."""
    start = time.time()
    build_args = [a for kv in [f"BASE={BASE}", *args] for a in ("--build-arg", kv)]
    proc = subprocess.run(
        ["buildah", *store, "bud", "--pull=never", "--layers=false", "--isolation", "chroot",
         "--network", "host", "--format", "docker",
         "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
         *local_indexes(Path(store[store.index("--root") + 1]).parent),
         *build_args, "-f", dockerfile, "-t", tag, "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = subprocess.run(["podman", *store, "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True).stdout.strip()
    return f"{tag}: built in {time.time() - start:.0f} s, {int(size) / 1e9:.2f} GB"


@dataclass(frozen=True)
class Image:
    """An image a test module builds and runs, named by the module's IMAGE_BUILD; its store lives from its build
    to the end of that module."""
    name: str
    dockerfile: str
    tag: str
    build_args: tuple[str, ...] = ()
    need_gb: float = 3
    prepare: Callable[[], None] | None = None  # writes what the build context needs, before the build starts


@dataclass(frozen=True)
class Built:
    store: list[str]
    folder: Path
    note: str


class Builds:
    """The images the session's tests use, built in one background thread from the start of the session, one at a
    time in the order their tests run (one build's disk at a time). A build spends about half its time waiting on
    the disk and pip, half a core idle that the tests before it use; tests/conftest.py starts the builds and runs
    the image tests last, so they seldom wait."""

    def __init__(self, base: Path):
        self.base = base
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-build")
        self.jobs: dict[str, Future] = {}

    def start(self, image: Image) -> None:
        if image.name not in self.jobs:
            if image.prepare is not None:
                image.prepare()  # here, not in the build's thread: torch's global generator is the tests'
            self.jobs[image.name] = self.pool.submit(self._build, image)

    def _build(self, image: Image) -> Built:
        folder = self.base / f"oci-{image.name}"
        store = open_store(folder, image.need_gb)
        try:
            return Built(store, folder, build(store, image.dockerfile, image.tag, *image.build_args))
        except BaseException:
            remove_store(store, folder)
            raise

    @contextlib.contextmanager
    def take(self, image: Image):
        """The image's store once built (the build's failure raised here), removed after the block."""
        self.start(image)
        built = self.jobs[image.name].result()
        print(f"\n{built.note}", file=sys.stderr)
        try:
            yield built.store
        finally:
            remove_store(built.store, built.folder)

    def close(self) -> None:
        """At the session's end: stores no test took (an interrupted session) are removed too."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in self.jobs.values():
            if not job.cancelled() and job.exception() is None and job.result().folder.exists():
                remove_store(job.result().store, job.result().folder)


def image_fixture(image: Image):
    """A module fixture: the image's store, built in the background from the session's start (tests/conftest.py)."""
    @pytest.fixture(scope="module")
    def image_store(image_builds: Builds):
        with image_builds.take(image) as store:
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
