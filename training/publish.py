"""Publishing an artifact version: atomic, and gated.

1. everything is written into a staging directory beside the target (same filesystem),
2. the staging directory is renamed to <version> (atomic on POSIX): the version always exists after export,
3. LATEST (what the service loads) moves only if the publish gate passes: test accuracy at least
   export.min_test_accuracy and, against a published model with the same classes, at most export.max_regression
   points worse. It is written to a temporary file, fsynced and os.replace()d, so a reader never sees it half-written.
`python -m training publish --model artifacts/<name> <version>` promotes a version by hand, with the same log line.
"""
from __future__ import annotations

import json
from pathlib import Path

from contract import publish as versions
from contract.card import load_card
from contract.files import sha256_of
from contract.publish import install

from .log import event

__all__ = ["EXIT_NOT_PUBLISHED", "PublishRefused", "gate", "install", "promote", "publish_by_hand", "sha256_of"]
EXIT_NOT_PUBLISHED = 3  # trained and exported, but LATEST kept: the Job fails without retrying (podFailurePolicy)


class PublishRefused(RuntimeError):
    def __init__(self, version_dir: Path, reasons: list[str]):
        self.version_dir = version_dir
        super().__init__(f"{version_dir.name} was exported to {version_dir} but not published (LATEST unchanged): "
                         + "; ".join(reasons) + f". To serve it anyway: python -m training publish --model "
                         f"{version_dir.parent} {version_dir.name}")


def published_card(root: Path) -> dict | None:
    version = versions.published_version(root)
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
    previous = versions.promote(root, version)
    event(f"published {root.name} {version} (LATEST, was {previous or 'none'}): {why}", model=root.name,
          version=version, previous=previous)


def publish_by_hand(model_dir: Path, version: str) -> Path:
    """`python -m training publish`: a complete, intact version (files present, sha256 as in model.json) becomes
    LATEST."""
    target = Path(model_dir) / version
    if not target.is_dir():
        root = Path(model_dir)
        versions_there = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) \
            if root.is_dir() else []
        raise FileNotFoundError(f"{target} is not a published version (versions in {model_dir}: {versions_there})")
    load_card(target)  # ArtifactError (a RuntimeError: one clear line) if incomplete or damaged
    promote(Path(model_dir), version, "by hand (python -m training publish)")
    return target
