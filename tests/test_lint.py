"""The linter is part of the test command (CI runs it too): ruff with the project's settings (pyproject.toml)."""
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
