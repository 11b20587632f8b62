"""Dockerfiles through a real linter; the serving image's install list has no torch."""
import json
import re
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
@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_serve_variants_install_one_onnxruntime_and_no_torch(tmp_path, variant):
    """cpu: plain onnxruntime and no CUDA library; gpu: onnxruntime-gpu with the CUDA 13 libraries it loads. Never
    both onnxruntime packages in one environment, never torch."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report",
                    str(report), f".[serve-{variant}]"], cwd=ROOT, check=True, capture_output=True)
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "bentoml" in names and not {n for n in names if n.startswith("torch") or n == "triton"}
    cuda = {n for n in names if n.startswith(("nvidia-cu", "nvidia-cublas", "nvidia-cudnn"))}
    if variant == "cpu":
        assert "onnxruntime" in names and "onnxruntime-gpu" not in names and not cuda, cuda
    else:
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names
        assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cudnn-cu13"} <= cuda, cuda


def _torch_pins(path) -> list[str]:
    return sorted(re.findall(r"(torch(?:vision)?==[0-9.]+)", path.read_text()))


def test_training_image_pins_the_tested_torch():
    """Dockerfile.train installs exactly the torch / torchvision that .ci/setup installs and every test runs on."""
    assert _torch_pins(ROOT / "Dockerfile.train") == _torch_pins(ROOT / ".ci" / "setup") != []
