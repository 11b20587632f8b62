"""The training job's one configuration model: YAML file, then environment, then `--set` flags.

Every value is validated before any work starts, so a typo fails in the first second with the field name and the
allowed values, not an hour later inside PyTorch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from contract.preprocess import PreprocessSpec

from .registry import BACKBONES

ENV_PREFIX = "TRAINING__"  # TRAINING__PHASE2__EPOCHS=8 is the same as --set phase2.epochs=8


class ConfigError(ValueError):
    """A user mistake in the configuration; the message says which field and what is allowed."""


# An object-store URL (s3://bucket/prefix, gs://...) kept as text: Path() would fold its '//'. Tried before Path
# (union_mode left_to_right), so a plain path stays a Path. training.object_store mirrors or publishes it.
StoreURL = Annotated[str, StringConstraints(pattern=r"^(?!file://)[a-z][a-z0-9+.-]*://")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, regex_engine="python-re")  # StoreURL's (?!


class ManifestConfig(Strict):
    """How a CSV manifest names its images (data.path = the .csv file; relative paths are under its folder)."""
    path_column: str = "path"
    label_column: str = "label"
    path_template: str | None = Field(None, description="build the path from columns, e.g. 'train/{id}.jpg'; "
                                                        "replaces path_column")
    split_column: str | None = Field(None, description="a column of train / val / test (also training, valid, "
                                                       "validation, dev, testing, test_set): the team's own split")


class DataConfig(Strict):
    path: StoreURL | Path = Field(Path("../shared/data/hymenoptera_data"), union_mode="left_to_right",
                                  description="a folder, a CSV manifest, cifar10/100's folder, or an object-store "
                                              "URL of one (s3://bucket/prefix, gs://...; mirrored into cache_dir)")
    cache_dir: Path | None = Field(None, description="where an object-store data.path is mirrored, keyed by each "
                                                     "object's ETag; default <output_dir>/data_mirror")
    source: Literal["auto", "folder", "csv", "cifar10", "cifar100"] = "auto"
    manifest: ManifestConfig = ManifestConfig()
    exclude: list[str] = Field([], description="globs relative to data.path left out of the dataset, e.g. "
                                               "'models' or '*/masks/*' (a matching folder takes all below it)")
    small_classes: Literal["error", "drop"] = Field(
        "error", description="a class with too few images to put one in every split: stop with its name and count "
                             "(error), or leave it out of the model and say so in the log and data report (drop)")
    duplicates: Literal["warn", "drop_from_train"] = Field(
        "warn", description="the same image in train and val/test (exact or near copy): report it (warn), or also "
                            "remove the training copies (drop_from_train)")
    near_duplicate_bits: int = Field(4, ge=0, le=32, description="pHash bits (of 64) two images may differ by and "
                                                                  "still count as near-copies; 0: exact pHash only")
    val_ratio: float = Field(0.15, gt=0, lt=0.5)
    test_ratio: float = Field(0.2, gt=0, lt=0.5)
    image_size: int | None = Field(None, ge=16, le=1024, description="S: side of the square the model sees; "
                                                                     "default: the backbone weights' crop")
    resize_size: int | None = Field(None, ge=16, le=2048, description="R: shorter side before the centre crop "
                                                                      "(eval); default: the weights' resize")
    interpolation: Literal["nearest", "bilinear", "bicubic"] | None = None
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    augment_on: Literal["loader", "device"] = Field(
        "loader", description="device: datasets held in memory (CIFAR) stay uint8 tensors on the training device and "
                              "are cropped, flipped and jittered there in batches (training.batch_augment)")
    num_workers: int = Field(2, ge=0)
    balance: Literal["none", "loss_weights", "sampler"] = "none"
    limit_per_class: int | None = Field(None, ge=1, description="cap images per class and split (quick runs)")
    max_file_bytes: int = Field(64 << 20, ge=1, description="a dataset file larger than this is skipped (listed in "
                                                             "the data report) without being read")
    max_image_pixels: int = Field(40_000_000, ge=1, description="an image larger than this (width x height, read "
                                  "from its header) is skipped before decoding: training decodes in full, about "
                                  "8 bytes a pixel")
    allow_outside_paths: bool = Field(False, description="a CSV manifest may name files outside its own folder "
                                                         "(absolute paths, ../); off, such rows stop the job")

    @property
    def spec(self) -> PreprocessSpec:
        """The evaluation preprocessing (filled in from the backbone's weights where not set): what model.json
        records and the service applies."""
        return PreprocessSpec(self.resize_size, self.image_size, self.interpolation)

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.resize_size is not None and self.image_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= image_size ({self.image_size})")
        return self


class AugmentConfig(Strict):
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    rotation: float = Field(10.0, ge=0, le=180)
    color_jitter: float = Field(0.2, ge=0, le=1)
    trivial_augment: bool = False
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class ModelConfig(Strict):
    backbone: Literal[tuple(BACKBONES)] = "resnet50"
    weights: str = Field("imagenet", description="imagenet | none | path to a state_dict file")
    download_weights: bool = Field(False, description="allow fetching ImageNet weights at run time")
    hidden_dim: int | None = Field(None, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)


class Phase1Config(Strict):
    epochs: int = Field(5, ge=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    feature_cache: Literal["auto", "always", "never"] = Field(
        "auto", description="train the head on backbone features computed once (training.feature_cache); auto: "
                            "when it saves time (epochs > cache_views) and nothing mixes images (MixUp/CutMix)")
    cache_views: int = Field(2, ge=1, description="augmented views of each training image in the cache; "
                                                  "epoch e trains on view e mod cache_views")


class Phase2Config(Strict):
    epochs: int = Field(10, ge=0)
    unfreeze: str = Field("top", description="'top' (last stage), a stage name such as layer3 or layer3+layer4 "
                                             "(it and every stage above it), or 'all'")
    gradual_every: int = Field(0, ge=0, description="0: unfreeze at once; k: one more stage every k epochs")
    head_lr: float = Field(1e-3, gt=0)
    backbone_lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    batchnorm: Literal["frozen", "train"] = "frozen"


class EarlyStopConfig(Strict):
    metric: Literal["val_acc", "val_loss", "val_macro_f1"] = "val_acc"
    patience: int = Field(5, ge=1)


class ExportConfig(Strict):
    enabled: bool = True
    fp16: bool = False
    int8: bool = Field(True, description="also ship model.int8.onnx for CPU nodes (training.quantize), if it passes "
                                         "the int8 gate; the service checks it again on every node")
    int8_max_drop: float = Field(0.5, ge=0, description="int8 gate: points of test accuracy the int8 variant may lose "
                                                        "against fp32")
    int8_min_agreement: float = Field(0.99, ge=0, le=1, description="int8 gate: share of test images on which int8 "
                                                                    "and fp32 give the same top-1 class")
    int8_min_speedup: float = Field(1.0, ge=0, description="int8 gate: int8 must run at least this many times fp32's "
                                                           "images per second where it is exported (MobileNetV3 runs "
                                                           "slower in int8 on CPUs)")
    # one name is a list of one: `int8_calibration: minmax` in YAML, and the runs saved when it was one method
    int8_calibration: Annotated[list[Literal["minmax", "entropy", "percentile"]],
                                BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        ["minmax", "percentile"], min_length=1, description="onnxruntime's calibration methods to try; the one "
        "agreeing most with fp32 on the validation split is kept (bench/quantize.py compares them)")
    int8_weights: list[Literal["8bit", "7bit"]] = Field(
        ["8bit", "7bit"], min_length=1, description="the int8 files to make: 8bit (model.int8.onnx) for CPUs with "
        "VNNI or AMX, 7bit (model.int8-7bit.onnx, reduce_range) for CPUs with AVX2 alone, whose int8 sums saturate on "
        "8-bit weights; each ships only if it passes the int8 gate on the exporting CPU")
    int8_calibration_images: int = Field(64, ge=1, description="training images the activation ranges are "
                                                               "calibrated on")
    int8_fp32_layers: list[Annotated[int, Field(ge=0)]] = Field(
        [0, 2, 8], min_length=1, description="mixed precision, tried in this order while no calibration method's "
        "int8 file agrees with fp32 on the validation split as int8_min_agreement asks: the first that many "
        "convolution / linear layers stay in fp32 (the CIFAR-10 subset's sensitive layers are its first ones, "
        "bench/RESULTS.md); each costs speed")
    opset: int = Field(18, ge=13)
    skew_tolerance: float = Field(0.3, ge=0, description="allowed |acc_onnx - acc_torch| in points")
    min_test_accuracy: float = Field(0.0, ge=0, le=1, description="publish gate: LATEST moves only at or above it")
    max_regression: float = Field(2.0, ge=0, description="publish gate: points of test accuracy the new version may "
                                                         "lose against the published one (same classes)")
    majority_significance: float = Field(0.05, gt=0, le=1, description="publish gate: the test accuracy must beat "
                                         "the share of the test split's largest class, by a one-sided binomial test "
                                         "at this level (the margin a test of that size makes significant); 1: off")

    @model_validator(mode="after")
    def _layers_increase(self) -> "ExportConfig":
        layers = self.int8_fp32_layers
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"export.int8_fp32_layers must increase (fewest fp32 layers first), got {layers}")
        return self


class EvalConfig(Strict):
    temperature_scaling: bool = Field(True, description="fit a softmax temperature on the validation split")


class TuneConfig(Strict):
    """`python -m training tune` (training.tune): the recipe chosen on validation, then trained in full."""
    head_trials: int = Field(24, ge=1, description="phase-1 trials on the cached backbone features (seconds each): "
                                                   "head and backbone-free settings")
    trials: int = Field(8, ge=1, description="phase-2 trials from the best head, each pruned on validation")
    max_epochs: int = Field(8, ge=1, description="the most epochs a phase-2 trial may choose")
    max_unfreeze: int = Field(3, ge=1, description="how many stages from the top phase 2 may unfreeze")
    objective: Literal["auto", "val_acc", "val_macro_f1"] = Field(
        "auto", description="auto: validation macro-F1 where the training classes are imbalanced (largest / "
                            "smallest >= 1.5), accuracy otherwise")
    budget_minutes: float | None = Field(None, gt=0, description="search time: no trial starts after it, and a "
                                                                 "running one stops at its next epoch (the "
                                                                 "configured settings' trial excepted); the "
                                                                 "final training comes on top")
    final_minutes: float | None = Field(
        None, gt=0, description="phase-2 time of the final run: the chosen recipe's phase 2 is lengthened to the "
                                "epochs that fit (never shortened; seconds per epoch from its own trial), early "
                                "stopping on the objective ending it where validation stops improving; default: "
                                "tune.budget_minutes (none without a budget: the recipe as chosen)")
    prune: bool = Field(True, description="stop a trial early when its validation is below the median of earlier "
                                          "trials at the same epoch (Optuna's MedianPruner)")
    image_sizes: list[Annotated[int, Field(ge=32, le=1024)]] | None = Field(
        None, description="image sizes (data.image_size, px) the chosen recipe is also trained at, each with its own "
                          "feature cache, after the two searches; default: 64 px either side of the configured size "
                          "(multiples of 32, at least 32); [] keeps the configured size")


class TrainConfig(Strict):
    name: str = Field("model", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    output_dir: Path = Path("runs/model")
    artifacts_dir: StoreURL | Path = Field(Path("artifacts"), union_mode="left_to_right",
                                           description="a folder, or an object-store URL the versions are uploaded "
                                                       "to (LATEST last)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    deterministic: bool | None = Field(
        None, description="deterministic kernels, so a resumed run ends with the same weights as an uninterrupted "
                          "one; default: on for CPU, off for CUDA (cuDNN autotuning: faster, not bit-reproducible)")
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the training forward/backward (pays off on long GPU runs; "
                                             "the first steps pay for the compilation)")
    fused_optimizer: bool | None = Field(None, description="fused AdamW kernel; default: on CUDA")
    threads: int | None = Field(None, ge=1)
    lr_scaling: Literal["linear", "none"] = Field(
        "linear", description="under torchrun: multiply learning rates by the number of processes")
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    phase1: Phase1Config = Phase1Config()
    phase2: Phase2Config = Phase2Config()
    early_stop: EarlyStopConfig = EarlyStopConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _preprocessing_from_the_weights(self) -> "TrainConfig":
        """Unset sizes and interpolation follow the backbone's published preprocessing; with image_size alone set,
        R keeps the weights' ratio R/S (232/224 -> 73 for 64)."""
        d = self.data
        weights = BACKBONES[self.model.backbone].preprocessing
        resize, crop, interp = weights.resize_size, weights.image_size, weights.interpolation
        if d.image_size is None:
            d.image_size = crop
        if d.resize_size is None:
            d.resize_size = max(d.image_size, round(d.image_size * resize / crop))
        if d.interpolation is None:
            d.interpolation = interp
        return self

    @model_validator(mode="after")
    def _device_augmentation_has_its_ops(self) -> "TrainConfig":
        if self.data.augment_on == "device" and (self.augment.rotation or self.augment.trivial_augment):
            raise ValueError("data.augment_on=device offers crop, flip and colour jitter only: set augment.rotation=0 "
                             "and augment.trivial_augment=false, or data.augment_on=loader")
        return self

    @model_validator(mode="after")
    def _unfreeze_names_a_stage(self) -> "TrainConfig":
        allowed = ["top", "all", *BACKBONES[self.model.backbone].stages[1:]]
        if self._deepest_unfrozen() not in allowed:
            raise ValueError(f"phase2.unfreeze: '{self.phase2.unfreeze}' is not a stage of {self.model.backbone}; "
                             f"allowed: {', '.join(allowed)}")
        return self

    def _deepest_unfrozen(self) -> str:
        return self.phase2.unfreeze.split("+")[0].strip()  # "layer3+layer4" means from layer3 up

    def stages_to_unfreeze(self) -> list[str]:
        """Top-down list of the stages phase 2 trains, e.g. ['layer4', 'layer3'] for unfreeze=layer3."""
        stages = list(BACKBONES[self.model.backbone].stages)
        deepest = self._deepest_unfrozen()
        first = {"all": 0, "top": len(stages) - 1}.get(deepest) if deepest in ("all", "top") else stages.index(deepest)
        return stages[first:][::-1]


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(config)"
        lines.append(f"  {field}: {err['msg']}")
    return "invalid training config:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] = (), environ: dict | None = None) -> TrainConfig:
    """YAML file < TRAINING__A__B environment variables < `a.b=value` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    environ = os.environ if environ is None else environ
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX):
            set_dotted(tree, key[len(ENV_PREFIX):].lower().replace("__", "."), _parse_value(text))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        set_dotted(tree, key.strip(), _parse_value(text))
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
