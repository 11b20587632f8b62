"""Dockerfiles through a real linter; the serving image's install list has no torch."""
import json
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.parametrize("dockerfile", ["Dockerfile.train", "Dockerfile.serve"])
def test_hadolint_clean(dockerfile):
    proc = subprocess.run(["hadolint", str(ROOT / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _entrypoint(name: str) -> list[str]:
    entry = [line for line in (ROOT / name).read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert entry, name
    return json.loads(entry[0].split(" ", 1)[1])


def test_images_stop_cleanly_on_sigterm():
    """A Python PID 1 ignores SIGTERM: both images run under dumb-init, which forwards it. The serving image forwards
    it to serving.run alone, which drains before stopping bentoml serve (a signal to the whole group would stop
    bentoml's workers at once)."""
    assert _entrypoint("Dockerfile.train")[:2] == ["dumb-init", "--"]
    assert _entrypoint("Dockerfile.serve") == ["dumb-init", "--single-child", "--", "python", "-m", "serving.run"]


@pytest.mark.slow
def test_serve_install_has_no_torch(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report",
                    str(report), ".[serve]"], cwd=ROOT, check=True, capture_output=True)
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"bentoml", "onnxruntime-gpu"} <= names
    assert not {n for n in names if n.startswith("torch") or n in ("triton", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13")}
