"""bench/gpu/: the GPU machine's script parses, and the wheels it carries are the versions the tests pass with here.

(Its steps run for real with SMOKE=1 on any machine: `SMOKE=1 USE_CARRIED=0 PY=.venv/bin/python bash
bench/gpu/run.sh`, about 5 minutes here; too long for every test run, so not in the suite.)
"""
from __future__ import annotations

import subprocess
import tomllib
from importlib import metadata

import pytest
from helpers import ROOT

GPU = ROOT / "bench" / "gpu"


@pytest.mark.parametrize("script", ["run.sh", "pack.sh"])
def test_script_parses(script):
    done = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_carried_wheels_pin_what_pyproject_pins():
    """The versions pyproject pins exactly (BentoML: serving/bentoml_adapter.py changes its internals) are the ones
    carried; the other pins are the versions this environment had when the list was made (a fresh install may move
    them)."""
    pins = dict(line.split("==") for line in (GPU / "wheels.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    exact = dict(dep.split("==") for deps in pyproject["project"]["optional-dependencies"].values()
                 for dep in deps if "==" in dep and "[" not in dep.split("==")[0])
    assert "bentoml" in exact
    for name, version in exact.items():
        assert pins.get(name) == version, f"wheels.txt carries {name} {pins.get(name)}, pyproject pins {version}"
    assert metadata.version("bentoml") == pins["bentoml"]
