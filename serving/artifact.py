"""Find and check the model artifact (DESIGN.md's contract): model.onnx + model.json in a version directory.

The service refuses a model it cannot trust: missing files, a model.onnx whose sha256 differs from model.json, a
class list that does not match the model's output size. Each refusal says exactly what is wrong.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .preprocess import PreprocessSpec


class ArtifactError(RuntimeError):
    pass


class ModelCard(BaseModel):
    """The fields of model.json the service relies on (extra fields are kept, not required)."""
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    created: str = ""
    classes: list[str] = Field(min_length=2)
    image_size: int = Field(gt=0)
    resize_size: int = Field(gt=0)
    interpolation: str = Field(pattern="^(nearest|bilinear|bicubic)$")
    sha256: str
    metrics: dict = {}
    temperature: float = 1.0

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(self.resize_size, self.image_size, self.interpolation)

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("accuracy")


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def resolve(model_dir: Path | None, artifacts_root: Path | None, model_name: str | None) -> Path:
    """An explicit version directory, or artifacts_root/model_name/<contents of LATEST>."""
    if model_dir is not None:
        return Path(model_dir)
    if artifacts_root is None or not model_name:
        raise ArtifactError("set model_dir, or artifacts_root and model_name")
    latest = Path(artifacts_root) / model_name / "LATEST"
    if not latest.is_file():
        raise ArtifactError(f"no published model: {latest} does not exist (run the training job first)")
    return latest.parent / latest.read_text().strip()


def pin_version(settings):
    """Resolve LATEST once per server start, for every process of it: the resolved version directory becomes
    SERVING_MODEL_DIR, which `bentoml serve` hands to each service worker it spawns (and respawns). Otherwise
    ImageClassifier and Model would each read LATEST when they start, and a publish in between (or a worker restart
    after one) would pair one version's classes and preprocessing with another version's weights."""
    if settings.model_dir is not None or settings.artifacts_root is None or not settings.model_name:
        return settings
    try:
        version_dir = resolve(None, settings.artifacts_root, settings.model_name)
    except (ArtifactError, OSError):
        return settings  # nothing published yet: the services stay unready and say why
    os.environ["SERVING_MODEL_DIR"] = str(version_dir)
    return settings.model_copy(update={"model_dir": version_dir})


def resolve_path(path: Path) -> Path:
    """A version directory (holds model.onnx) as is, or a model directory (artifacts/<name>) through its LATEST."""
    path = Path(path)
    return path if (path / "model.onnx").is_file() else resolve(None, path.parent, path.name)


def load_card(version_dir: Path, verify: bool = True) -> ModelCard:
    version_dir = Path(version_dir)
    card_path, onnx_path = version_dir / "model.json", version_dir / "model.onnx"
    for p in (card_path, onnx_path):
        if not p.is_file():
            raise ArtifactError(f"model artifact incomplete: {p} is missing")
    try:
        card = ModelCard.model_validate_json(card_path.read_text())
    except ValidationError as exc:
        raise ArtifactError(f"{card_path} does not follow the artifact contract: {exc}") from None
    if card.resize_size < card.image_size:
        raise ArtifactError(f"{card_path}: resize_size {card.resize_size} < image_size {card.image_size}")
    if verify:
        actual = sha256_of(onnx_path)
        if actual != card.sha256:
            raise ArtifactError(f"{onnx_path} sha256 {actual[:12]}… does not match model.json ({card.sha256[:12]}…): "
                                "the file is corrupt or from another model")
    return card


def model_file(version_dir: Path, card: ModelCard, fp16: bool, verify: bool = True) -> Path:
    """model.onnx, or the fp16 variant listed in model.json (checked against its own sha256)."""
    if not fp16:
        return Path(version_dir) / "model.onnx"
    variant = (getattr(card, "variants", None) or {}).get("fp16")
    if not variant:
        raise ArtifactError(f"precision=fp16 but {version_dir}/model.json lists no fp16 variant (export.fp16=true)")
    path = Path(version_dir) / variant["file"]
    if not path.is_file():
        raise ArtifactError(f"model artifact incomplete: {path} is missing")
    if verify and sha256_of(path) != variant["sha256"]:
        raise ArtifactError(f"{path} sha256 does not match model.json: the file is corrupt or from another model")
    return path


def has_fp16(card: ModelCard) -> bool:
    return bool((getattr(card, "variants", None) or {}).get("fp16"))
