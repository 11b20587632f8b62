"""The linter is part of the test command (CI runs it too): ruff with the project's settings (pyproject.toml)."""
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth: a lazy import inside a function counts)."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_training_and_serving_meet_only_at_the_contract():
    """ARCHITECTURE.md: training and serving never import each other; the one exception is the demo (the README's
    end-to-end command), which starts the service through serving.launch, a process launcher that imports nothing of
    the service. The contract imports neither."""
    crossings = []
    for package, other in (("training", "serving"), ("serving", "training"), ("contract", "training"),
                           ("contract", "serving")):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in _imports(path):
                if module.split(".")[0] == other:
                    crossings.append(f"{path.relative_to(ROOT)} imports {module}")
    assert crossings == ["training/demo.py imports serving.launch"], crossings
    assert not {m for m in _imports(ROOT / "serving" / "launch.py") if m.split(".")[0] in ("serving", "contract")}


PACKAGES = ("contract", "serving", "training", "bench")
MAX_CLASS_LINES = 150  # issue 28: one class, one job; Trainer and Core had grown past it


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_class_is_over_150_lines():
    import ast
    long = [f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in _sources() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not long, long


def test_private_bentoml_modules_are_imported_in_the_adapter_only():
    """Where BentoML has no public hook, serving/bentoml_adapter.py is the one place that reaches inside it (and
    checks the version it was written for); nothing else may, so an upgrade is a port of one file."""
    private = ("_bentoml_impl", "_bentoml_sdk", "bentoml._internal")
    found = {str(path.relative_to(ROOT)) for path in _sources()
             if any(m.startswith(private) for m in _imports(path))}
    assert found == {"serving/bentoml_adapter.py"}, found
