"""Shared fixtures: the real dataset, a small real trained artifact, a running `bentoml serve`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from helpers import DATA
from hypothesis import settings
from oci import Builds, Image

# Tools installed into the venv (kubernetes-validate, hadolint, kubectl, torchrun) are found even when pytest is
# started as .venv/bin/python -m pytest without activating the venv.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# The test command replays the same fuzz examples on every run (a red CI must mean a regression, and be
# reproducible); a person hunting bugs runs
# `HYPOTHESIS_PROFILE=explore FUZZ_EXAMPLES=1000 pytest tests/serving/test_reliability.py`.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Small and fast, but real: pretrained EfficientNet-Lite0 on real photos at 64 px.
QUICK = ["data.image_size=64", "data.resize_size=73", "data.num_workers=0", "data.batch_size=16",
         "model.backbone=efficientnet_lite0", "phase1.epochs=2", "phase2.epochs=1", "threads=2",
         "data.limit_per_class=40", "export.fp16=true",
         "export.int8=false"]  # the serving tests compare with fp32; tests/training/test_int8.py makes its own


def image_build(item: pytest.Item) -> Image | None:
    """The image a test's module builds (tests/oci.py), if any."""
    found = getattr(item.module, "IMAGE_BUILD", None)
    return found if isinstance(found, Image) else None


# Where a test's folder runs: its images build in the background from the session's start (image_builds), beside
# throughput-bound tests (training) rather than latency-bound ones (serving: deadlines, drains, soak), and the image
# tests run last, when their images are built.
ORDER = ("tests/contract", "tests/k8s", "tests/training", "tests/test_", "tests/serving")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[bool, int]:
        folder = next((i for i, prefix in enumerate(ORDER) if item.nodeid.startswith(prefix)), len(ORDER))
        return image_build(item) is not None, folder
    items.sort(key=rank)  # stable: pytest's order within a folder and module


START = time.monotonic()
_module_running = [""]


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    """The session's minutes so far at each module's first test: a run its time limit cut short still says where
    the time went (the durations table comes only at the end)."""
    module = nodeid.split("::")[0]
    if module != _module_running[0]:
        _module_running[0] = module
        print(f"\n{(time.monotonic() - START) / 60:5.1f} min  {module} ", end="", flush=True)


@pytest.fixture(scope="session", autouse=True)
def image_builds(request, tmp_path_factory):
    """Starts building every image the selected tests use, in the order they run (tests/oci.py: Builds)."""
    builds = Builds(tmp_path_factory.getbasetemp())
    for item in request.session.items:
        if image_build(item) is not None:
            builds.start(image_build(item))
    yield builds
    builds.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real dataset missing at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """(config, result) of one real quick training run with export; shared by export and serving tests."""
    from training.config import load_config
    from training.job import train_job
    tmp = tmp_path_factory.mktemp("trained")
    cfg = load_config(None, QUICK + [f"data.path={data_dir}", f"output_dir={tmp / 'run'}",
                                     f"artifacts_dir={tmp / 'artifacts'}", "name=bees"])
    result = train_job(cfg)
    return cfg, result


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-protocol server on 127.0.0.1 (tests/s3server.py) and the environment that reaches it."""
    from s3server import s3_server
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


@pytest.fixture(scope="session")
def artifact(trained) -> Path:
    return Path(trained[1]["artifact"])


