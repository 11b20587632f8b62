"""Publishing an artifact version: atomic, and gated.

1. everything is written into a staging directory beside the target (same filesystem),
2. the staging directory is renamed to <version> (atomic on POSIX): the version always exists after export,
3. LATEST (what the service loads) moves only if the publish gate passes: test accuracy at least
   export.min_test_accuracy and, against a published model with the same classes, at most export.max_regression
   points worse. It is written to a temporary file, fsynced and os.replace()d, so a reader never sees it half-written.
`python -m training publish --model artifacts/<name> <version>` promotes a version by hand, with the same log line.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .log import event

EXIT_NOT_PUBLISHED = 3  # trained and exported, but LATEST kept: the Job fails without retrying (podFailurePolicy)


class PublishRefused(RuntimeError):
    def __init__(self, version_dir: Path, reasons: list[str]):
        self.version_dir = version_dir
        super().__init__(f"{version_dir.name} was exported to {version_dir} but not published (LATEST unchanged): "
                         + "; ".join(reasons) + f". To serve it anyway: python -m training publish --model "
                         f"{version_dir.parent} {version_dir.name}")


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def install(staging: Path, root: Path, version: str) -> Path:
    _fsync_tree(staging)
    target = root / version
    os.rename(staging, target)
    return target


def published_version(root: Path) -> str | None:
    latest = root / "LATEST"
    return latest.read_text().strip() if latest.is_file() else None


def published_card(root: Path) -> dict | None:
    version = published_version(root)
    card = root / version / "model.json" if version else None
    return json.loads(card.read_text()) if card is not None and card.is_file() else None


def gate(card: dict, root: Path, min_test_accuracy: float, max_regression: float) -> dict:
    """Decide whether `card` may replace what `root`'s LATEST serves; the reasons when not."""
    acc = card["metrics"]["test"]["accuracy"]
    reasons = []
    if acc < min_test_accuracy:
        reasons.append(f"test accuracy {acc:.4f} is under export.min_test_accuracy {min_test_accuracy}")
    current, compared = published_card(root), None
    if current is not None and current["classes"] == card["classes"]:
        current_acc = current["metrics"]["test"]["accuracy"]
        compared = {"version": current["version"], "test_accuracy": current_acc}
        drop = (current_acc - acc) * 100
        if drop > max_regression:
            reasons.append(f"test accuracy {acc:.4f} is {drop:.2f} points under the published version "
                           f"{current['version']} ({current_acc:.4f}); export.max_regression allows {max_regression}")
    return {"passed": not reasons, "reasons": reasons, "min_test_accuracy": min_test_accuracy,
            "max_regression_points": max_regression, "compared_with": compared}


def promote(root: Path, version: str, why: str) -> None:
    previous = published_version(root)
    tmp = root / f".LATEST.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "LATEST")
    event(f"published {root.name} {version} (LATEST, was {previous or 'none'}): {why}", model=root.name,
          version=version, previous=previous)


def publish_by_hand(model_dir: Path, version: str) -> Path:
    """`python -m training publish`: a complete, intact version becomes LATEST."""
    target = Path(model_dir) / version
    card_path, onnx_path = target / "model.json", target / "model.onnx"
    for p in (card_path, onnx_path):
        if not p.is_file():
            versions = sorted(d.name for d in Path(model_dir).iterdir() if d.is_dir() and not d.name.startswith(".")) \
                if Path(model_dir).is_dir() else []
            raise FileNotFoundError(f"{p} is missing: not a published version (versions in {model_dir}: {versions})")
    if sha256_of(onnx_path) != json.loads(card_path.read_text())["sha256"]:
        raise ValueError(f"{onnx_path} does not match the sha256 in its model.json: the version is damaged")
    promote(Path(model_dir), version, "by hand (python -m training publish)")
    return target
