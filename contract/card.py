"""model.json: one pydantic model that training writes and the service reads (extra fields are kept, not required).

The service refuses a model it cannot trust: missing files, a model.onnx whose sha256 differs from model.json, a
card that does not follow this schema. Each refusal says exactly what is wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .canary import Canary
from .files import sha256_of
from .monitoring import Monitoring
from .preprocess import PreprocessSpec

INPUT = {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB"}
OUTPUTS = ["logits", "probabilities"]


class ArtifactError(RuntimeError):
    pass


class Block(BaseModel):
    """A typed part of model.json; fields a newer trainer adds are kept, not refused (an older service loads it)."""
    model_config = ConfigDict(extra="allow")


class ClassMetrics(Block):
    precision: float
    recall: float
    f1: float
    support: int


class WithCopies(Block):
    """Accuracy counting the test images that have a copy in train: the raw figure, beside the honest one."""
    accuracy: float
    n: int
    copies_in_train: int


class SplitMetrics(Block):
    """training.metrics.full on one split (the test split: the images without a copy in train)."""
    n: int
    accuracy: float
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    top5_accuracy: float | None = None
    roc_auc: float | None = None
    ece: float | None = None
    ece_uncalibrated: float | None = None
    log_loss: float | None = None
    with_copies: WithCopies | None = None


class Metrics(Block):
    test: SplitMetrics | None = None
    best_val: dict[str, Any] = Field(default_factory=dict)  # {<early_stop.metric>: value, "at": [phase, epoch]}


class ParityCheck(Block):
    """onnxruntime against PyTorch on the same images at one batch size."""
    max_abs_diff: float
    argmax_equal: bool


class SkewCheck(Block):
    """Test accuracy through the service's own scorer against training's evaluation (the reference is named by its
    key: torch_accuracy for fp32, <precision>_onnxruntime_accuracy for a variant)."""
    served_accuracy: float
    gap_points: float
    tolerance_points: float
    n: int


class SkewGate(SkewCheck):
    int8: SkewCheck | None = None  # each int8 file through the service's path, when it ships
    int8_7bit: SkewCheck | None = None


class ComparedWith(Block):
    version: str
    test_accuracy: float | None


class MajorityBaseline(Block):
    majority_share: float
    n: int
    correct: int
    p_value: float
    significance: float
    passed: bool


class PublishGate(Block):
    passed: bool
    reasons: list[str]
    min_test_accuracy: float
    max_regression_points: float
    compared_with: ComparedWith | None
    majority_baseline: MajorityBaseline


class Calibration(Block):
    """How the int8 variant was calibrated (training.quantize): the method chosen by validation agreement."""
    method: str
    images: int
    format: str
    validation_agreement_by_method: dict[str, float] = Field(default_factory=dict)
    activations: str = ""
    weights: str = ""
    fp32_layers: int = 0  # the first convolution / linear layers left in fp32 (mixed precision); 0: all int8


class Tuning(Block):
    """How the recipe was chosen (training.tune): on the validation split only, the test split unseen."""
    objective: str  # val_acc or val_macro_f1
    why: str  # why that objective (imbalance ratio)
    best_value: float  # the chosen recipe's validation objective in the search
    default_value: float | None  # the configured recipe's (both phases as configured)
    params: dict[str, Any]  # the chosen settings, as dotted config keys
    kept_configured: bool = False  # nothing the search found beat the configured recipe on validation
    head_trials: int
    finetune_trials: int
    pruned: int
    search_seconds: float
    image_sizes: dict[int, float] = {}  # the chosen recipe's validation objective at each image size tried
    # phase 2 of the final run where tune.final_minutes lengthened the chosen recipe's (early stopping may end it
    # sooner), and the seconds per phase-2 epoch that lengthening was sized by; None: trained as chosen
    final_phase2_epochs: int | None = None
    phase2_epoch_seconds: float | None = None


class Variant(BaseModel):
    """Another precision of the same model (fp16, int8), checked against the fp32 one at export."""
    model_config = ConfigDict(extra="allow")
    file: str
    sha256: str
    max_abs_diff_vs_fp32: float
    top1_agreement: float
    limits: dict[str, float]  # what it had to meet at export
    n: int
    test_accuracy: float | None = None  # int8: on the test images, beside fp32's
    fp32_test_accuracy: float | None = None
    mean_abs_dprob: float | None = None
    speedup_vs_fp32: float | None = None  # int8: images per second over fp32's where it was exported
    calibration: Calibration | None = None  # int8
    canary: Canary | None = None  # int8: the node check's images and limits (contract.canary)


# a class name's length, refused past it by training (folder names cannot be longer; a CSV column could be) and by
# the service where a client names a class: an error then never echoes megabytes of what the client sent
MAX_CLASS_NAME_CHARS = 255


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
    metrics: Metrics = Field(default_factory=Metrics, description="test (and best validation) metrics from training")
    config: dict = Field(default_factory=dict, description="the training config (training.config.TrainConfig)")
    libraries: dict[str, str] = Field(default_factory=dict)
    parity: dict[str, ParityCheck] = Field(default_factory=dict, description="onnxruntime vs PyTorch on real test "
                                                                              "images, by batch size (batch_<n>)")
    variants: dict[str, Variant] = Field(default_factory=dict)
    variants_refused: dict[str, str] = Field(default_factory=dict, description="variant -> why it was not shipped")
    skew_gate: SkewGate | None = None
    publish_gate: PublishGate | None = None
    monitoring: Monitoring | None = Field(None, description="ATC thresholds and drift reference (contract.monitoring)")
    export_seconds: float | None = None
    tuning: Tuning | None = Field(None, description="how the recipe was chosen, where it was searched (training.tune)")

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
        return self.metrics.test.accuracy if self.metrics.test is not None else None

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
