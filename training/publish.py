"""Publishing an artifact version: atomic, and gated.

1. everything is written into a staging directory beside the target (same filesystem),
2. the staging directory is renamed to <version> (atomic on POSIX): the version always exists after export,
3. LATEST (what the service loads) moves only if the publish gate passes: test accuracy significantly above
   always answering the test split's largest class (export.majority_significance), at least
   export.min_test_accuracy and, against a published model with the same classes, at most export.max_regression
   points worse. It is written to a temporary file, fsynced and os.replace()d, so a reader never sees it half-written.
`python -m training publish --model artifacts/<name> <version>` promotes a version by hand, with the same log line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract import publish as versions
from contract.card import ComparedWith, MajorityBaseline, ModelCard, PublishGate, SplitMetrics, load_card
from contract.files import sha256_of
from contract.publish import install

from .log import event

__all__ = ["EXIT_NOT_PUBLISHED", "GateLimits", "PublishRefused", "gate", "install", "promote", "publish_by_hand",
           "sha256_of"]
EXIT_NOT_PUBLISHED = 3  # trained and exported, but LATEST kept: the Job fails without retrying (podFailurePolicy)


class PublishRefused(RuntimeError):
    def __init__(self, version_dir: Path, reasons: list[str], store_url: str | None = None):
        self.version_dir, self.reasons = version_dir, reasons
        where, how = (version_dir, f"python -m training publish --model {version_dir.parent} {version_dir.name}") \
            if store_url is None else (f"{store_url}/{version_dir.name}", f"write its name into {store_url}/LATEST, "
                                       f"e.g. echo {version_dir.name} | aws s3 cp - {store_url}/LATEST")
        super().__init__(f"{version_dir.name} was exported to {where} but not published (LATEST unchanged): "
                         + "; ".join(reasons) + f". To serve it anyway: {how}")


def published_card(root: Path) -> ModelCard | None:
    version = versions.published_version(root)
    card = root / version / "model.json" if version else None
    return ModelCard.model_validate_json(card.read_text()) if card is not None and card.is_file() else None


@dataclass(frozen=True)
class GateLimits:
    min_test_accuracy: float = 0.0
    max_regression: float = 100.0
    majority_significance: float = 0.05


def majority_baseline(test: SplitMetrics, significance: float) -> MajorityBaseline:
    """How the test accuracy compares with always answering the test split's largest class: the one-sided binomial
    test's p-value of that many correct answers if each were right with the largest class's share. A model trained
    on swapped labels (16.7 % on 2 classes) or on noise sits at or under the share and fails it."""
    from scipy.stats import binomtest  # here, not at import: `python -m training` imports this module at start-up

    n = test.n
    share = max(c.support for c in test.per_class.values()) / n
    correct = round(test.accuracy * n)
    p_value = float(binomtest(correct, n, share, alternative="greater").pvalue) if significance < 1 else 0.0
    return MajorityBaseline(majority_share=share, n=n, correct=correct, p_value=p_value, significance=significance,
                            passed=p_value <= significance)


def gate(card: ModelCard, root: Path, limits: GateLimits) -> PublishGate:
    """Decide whether `card` may replace what `root`'s LATEST serves; the reasons when not."""
    acc = card.test_accuracy
    min_test_accuracy, max_regression = limits.min_test_accuracy, limits.max_regression
    reasons = []
    baseline = majority_baseline(card.metrics.test, limits.majority_significance)
    if not baseline.passed:
        reasons.append(f"test accuracy {acc:.4f} ({baseline.correct} of {baseline.n}) is not significantly "
                       f"above always answering the largest class ({baseline.majority_share:.4f}; one-sided "
                       f"binomial p = {baseline.p_value:.3g} > export.majority_significance "
                       f"{limits.majority_significance}): the model has not learned the task, or the test split is "
                       "too small to tell")
    if acc < min_test_accuracy:
        reasons.append(f"test accuracy {acc:.4f} is under export.min_test_accuracy {min_test_accuracy}")
    current, compared = published_card(root), None
    if current is not None and current.classes == card.classes and current.test_accuracy is not None:
        current_acc = current.test_accuracy
        compared = ComparedWith(version=current.version, test_accuracy=current_acc)
        drop = (current_acc - acc) * 100
        if drop > max_regression:
            reasons.append(f"test accuracy {acc:.4f} is {drop:.2f} points under the published version "
                           f"{current.version} ({current_acc:.4f}); export.max_regression allows {max_regression}")
    return PublishGate(passed=not reasons, reasons=reasons, min_test_accuracy=min_test_accuracy,
                       max_regression_points=max_regression, compared_with=compared, majority_baseline=baseline)


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
