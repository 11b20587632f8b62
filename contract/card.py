"""model.json: one pydantic model that training writes and the service reads (extra fields are kept, not required).

The service refuses a model it cannot trust: missing files, a model.onnx whose sha256 differs from model.json, a
card that does not follow this schema. Each refusal says exactly what is wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .files import sha256_of
from .preprocess import PreprocessSpec

INPUT = {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB"}
OUTPUTS = ["logits", "probabilities"]


class ArtifactError(RuntimeError):
    pass


class Variant(BaseModel):
    """Another precision of the same model (fp16, int8), checked against the fp32 one at export."""
    model_config = ConfigDict(extra="allow")
    file: str
    sha256: str
    max_abs_diff_vs_fp32: float
    top1_agreement: float
    limits: dict
    n: int
    test_accuracy: float | None = None  # int8: on the test images, beside fp32's
    fp32_test_accuracy: float | None = None
    mean_abs_dprob: float | None = None
    speedup_vs_fp32: float | None = None  # int8: images per second over fp32's where it was exported
    calibration: dict | None = None  # int8: method, images, format and types
    canary: dict | None = None  # int8: the node check's images and limits (contract.canary)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    created: str = ""
    classes: list[str] = Field(min_length=2)
    image_size: int = Field(gt=0, description="S: the square side the model takes")
    resize_size: int = Field(gt=0, description="R: the shorter side before the centre crop")
    interpolation: Literal["nearest", "bilinear", "bicubic"]
    input: dict = Field(default_factory=lambda: dict(INPUT))
    outputs: list[str] = Field(default_factory=lambda: list(OUTPUTS))
    temperature: float = Field(1.0, gt=0, description="softmax temperature fitted on the validation split")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of model.onnx")
    backbone: str = ""
    metrics: dict = Field(default_factory=dict, description="test (and best validation) metrics from training")
    config: dict = Field(default_factory=dict, description="the training config")
    libraries: dict = Field(default_factory=dict)
    parity: dict = Field(default_factory=dict, description="onnxruntime vs PyTorch on real test images")
    variants: dict[str, Variant] = Field(default_factory=dict)
    variants_refused: dict[str, str] = Field(default_factory=dict, description="variant -> why it was not shipped")
    skew_gate: dict | None = None
    publish_gate: dict | None = None
    monitoring: dict | None = Field(None, description="ATC thresholds and drift reference (contract.monitoring)")
    export_seconds: float | None = None

    @model_validator(mode="after")
    def _crop_fits(self) -> "ModelCard":
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} < image_size {self.image_size}")
        return self

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(self.resize_size, self.image_size, self.interpolation)

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("accuracy")

    def write(self, folder: Path) -> None:
        (Path(folder) / "model.json").write_text(self.model_dump_json(indent=2))


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
    if verify:
        actual = sha256_of(onnx_path)
        if actual != card.sha256:
            raise ArtifactError(f"{onnx_path} sha256 {actual[:12]}… does not match model.json ({card.sha256[:12]}…): "
                                "the file is corrupt or from another model")
    return card


def model_file(version_dir: Path, card: ModelCard, precision: str, verify: bool = True) -> Path:
    """model.onnx (fp32), or a variant listed in model.json (fp16, int8), checked against its own sha256."""
    if precision == "fp32":
        return Path(version_dir) / "model.onnx"
    variant = card.variants.get(precision)
    if variant is None:
        why = card.variants_refused.get(precision, f"export.{precision}=true makes it")
        raise ArtifactError(f"precision={precision} but {version_dir}/model.json lists no {precision} variant ({why})")
    path = Path(version_dir) / variant.file
    if not path.is_file():
        raise ArtifactError(f"model artifact incomplete: {path} is missing")
    if verify and sha256_of(path) != variant.sha256:
        raise ArtifactError(f"{path} sha256 does not match model.json: the file is corrupt or from another model")
    return path
