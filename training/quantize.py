"""The CPU variants: int8 files made by onnxruntime's own static quantization, each gated on accuracy at export.

Format and types, chosen by measurement (bench/RESULTS.md, "INT8"): QDQ, weights int8 per channel, activations
uint8 (uint8 x int8 is the pair the CPU's int8 dot-product kernels take; int8 x int8 ran at 0.8-1.1x fp32).
Two files, for the two kinds of x86 node a cluster mixes (WEIGHT_RANGES):
- `int8` (model.int8.onnx): 8-bit weights, for CPUs whose int8 dot product sums in 32 bits (VNNI, AMX). Measured on
  a VNNI + AMX Xeon, they lose less than 7-bit weights: +0.65 against -1.31 points on the demo photos, -0.9 to -1.3
  against -1.7 to -2.8 on the CIFAR subset (bench/RESULTS.md).
- `int8_7bit` (model.int8-7bit.onnx): onnxruntime's `reduce_range`, for CPUs with AVX2 alone, which sum pairs of
  uint8 x int8 products in 16 bits and saturate on 8-bit weights (7.5 points lost on the CIFAR subset on an AVX2
  EPYC).
Each is shipped only where it passes the gate here (so an AVX2-only export node ships no 8-bit file: it cannot check
one) and the service tries them in that order on its own node (contract.precision).
Calibration: export.int8_calibration_images training images through the evaluation transform (no augmentation);
each method of export.int8_calibration is tried and the one whose answers agree most with fp32 on the validation
split is kept (the test split only judges the result): minmax lost nothing on the demo photos where percentile lost
a photo, and percentile lost 0.8 points less than minmax on the CIFAR subset (bench/RESULTS.md). Where no method
agrees with fp32 on validation as often as the gate asks, the first export.int8_fp32_layers layers stay in fp32
(mixed precision, best_calibration): the CIFAR subset's model loses its int8 agreement in its first layers.

Each file also carries a canary set (canary*.npz: validation images as the model's uint8 input, with the fp32 and
int8 probabilities measured here); the service runs it on the node where it starts (contract.canary) and serves
another file where the int8 answers differ, for example on a CPU whose kernels saturate or a damaged file.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.canary import CANARY_FILE, MAX_PROB_DELTA, Canary, saturation_risk, write_canary
from contract.card import Calibration, Variant
from contract.files import sha256_of
from contract.preprocess import PreprocessSpec
from contract.scores import softmax

from .data import ImageSet
from .seeds import numpy_rng
from .transforms import eval_transform


@dataclass(frozen=True)
class WeightRange:
    """One int8 file: the card's variant name (contract.precision.INT8_VARIANTS), its files, its weights."""
    variant: str
    file: str
    canary: str
    reduce_range: bool
    weights: str  # as model.json describes them


WEIGHT_RANGES = {"8bit": WeightRange("int8", "model.int8.onnx", CANARY_FILE, False, "int8 per channel"),
                 "7bit": WeightRange("int8_7bit", "model.int8-7bit.onnx", "canary.int8-7bit.npz", True,
                                     "int8 per channel, reduce_range (7 bits)")}
CANARY_IMAGES = 16  # 2.4 MB of uint8 pixels at 224 px, compressed in canary.npz
BATCH = 16


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over uint8 NHWC images, one at a time: the histogram
    calibrators (percentile, entropy) of onnxruntime 1.31 stack every batch's outputs and fail on a last batch of
    another size (tests/training/test_int8.py calibrates on a count that is not a multiple of a batch)."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{"images": images[i:i + 1]} for i in range(len(images))])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


QUANTIZED_LAYERS = ("Conv", "Gemm", "MatMul")  # the layers whose weights become int8


def quantize(fp32: Path, out: Path, calibration: np.ndarray, method: str, reduce_range: bool,
             fp32_layers: int = 0) -> None:
    """fp32_layers: the first that many convolution / linear layers (graph order, nearest the input first) stay in
    fp32, their inputs and outputs too: mixed precision for models whose first layers are the sensitive ones."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # the calibration's own sessions: errors only (each would warn that the heatmap_classes default "will not be
    # treated as constant", which is its purpose: training.export.heatmap_classes_optional)
    ort.set_default_logger_severity(3)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and graph optimised, as the docs recommend
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # names from the graph being quantized: the pre-processing fuses and renames nodes (ONNX keeps graph.node
        # in topological order, so the first in the list are those nearest the input); read only when asked for
        excluded = [n.name for n in onnx.load(str(prepared)).graph.node
                    if n.op_type in QUANTIZED_LAYERS][:fp32_layers] if fp32_layers else []
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(str(prepared), str(out), CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method],
                            nodes_to_exclude=excluded,
                            extra_options={"CalibTensorRangeSymmetric": False})


def model_inputs(images: ImageSet, spec: PreprocessSpec, picks: list[int]) -> np.ndarray:
    """uint8 NHWC images as the model contract takes them (the evaluation transform)."""
    tf = eval_transform(spec)
    return np.stack([tf(images.source(i)).permute(1, 2, 0).numpy() for i in picks])


Runner = Callable[[np.ndarray], np.ndarray]


def runner(path: Path) -> Runner:
    """One onnxruntime session on an ONNX file: uint8 NHWC images -> logits, BATCH images per run."""
    from .export import ort_session

    session = ort_session(path)
    return lambda images: np.concatenate([session.run(["logits"], {"images": images[i:i + BATCH]})[0]
                                          for i in range(0, len(images), BATCH)])


def logits_of(runners: list[Runner], images: ImageSet, spec: PreprocessSpec) -> list[np.ndarray]:
    """Each runner's logits on every image of a split, each batch decoded once for all of them and BATCH at a time:
    memory stays flat however large the split."""
    out: list[list[np.ndarray]] = [[] for _ in runners]
    for i in range(0, len(images), BATCH):
        batch = model_inputs(images, spec, list(range(i, min(i + BATCH, len(images)))))
        for rows, run in zip(out, runners):
            rows.append(run(batch))
    return [np.concatenate(rows) for rows in out]


def spread(images: ImageSet, n: int, seed: int) -> list[int]:
    """n images taken across the classes in turn (seeded order within each class)."""
    rng = numpy_rng(seed, "int8 images")
    per_class = [rng.permutation([i for i, y in enumerate(images.labels) if y == c]).tolist()
                 for c in range(len(images.classes))]
    order = [i for row in itertools.zip_longest(*per_class) for i in row if i is not None]
    return order[:n]


@dataclass(frozen=True)
class Int8Plan:
    """What export.int8* asks for; the images come from the run's splits."""
    train: ImageSet
    val: ImageSet
    calibration_images: int
    methods: tuple[str, ...]
    max_drop_points: float
    min_agreement: float
    min_speedup: float = 1.0
    seed: int = 0
    weights: tuple[str, ...] = ("8bit", "7bit")  # keys of WEIGHT_RANGES: the files to try
    fp32_layers: tuple[int, ...] = (0,)  # mixed precision to try, in order, while validation agreement falls short


@dataclass(frozen=True)
class Choice:
    """One way to quantize: the calibration method, and how many of the first layers stay in fp32."""
    method: str
    fp32_layers: int = 0

    @property
    def name(self) -> str:
        return self.method + (f", first {self.fp32_layers} layers fp32" if self.fp32_layers else "")


@dataclass(frozen=True)
class Int8Inputs:
    """What every int8 file of one export is judged on: the same calibration, test and canary images."""
    fp32: Path
    run32: Runner
    calibration: np.ndarray
    canary: np.ndarray
    test_logits: np.ndarray  # fp32's
    test: ImageSet
    spec: PreprocessSpec
    temperature: float


def export_int8(staging: Path, temperature: float, spec: PreprocessSpec, test: ImageSet,
                plan: Int8Plan) -> tuple[dict[str, Variant], dict[str, str]]:
    """The int8 files that pass the gate, by variant name, and why each other one was not shipped."""
    run32 = runner(staging / "model.onnx")
    inputs = Int8Inputs(staging / "model.onnx", run32,
                        model_inputs(plan.train, spec, spread(plan.train, plan.calibration_images, plan.seed)),
                        model_inputs(plan.val, spec, spread(plan.val, CANARY_IMAGES, plan.seed)),
                        logits_of([run32], test, spec)[0], test, spec, temperature)
    shipped, refused = {}, {}
    for key in plan.weights:
        weights = WEIGHT_RANGES[key]
        if not weights.reduce_range and (risk := saturation_risk()):  # it could not be checked here
            refused[weights.variant] = (f"{weights.variant} ({weights.weights}): not made on this CPU: {risk}; "
                                        "export on a node with VNNI or AMX to ship it: shipped without the int8 "
                                        "variant")
            continue
        variant, why = _export_one(staging, weights, inputs, plan)
        if variant is None:
            refused[weights.variant] = why
        else:
            shipped[weights.variant] = variant
    return shipped, refused


def _export_one(staging: Path, weights: WeightRange, inputs: Int8Inputs,
                plan: Int8Plan) -> tuple[Variant | None, str | None]:
    """(the variant, None) when its file passes the gate, else (None, why), the file removed."""
    path = staging / weights.file
    choice, on_val, run8 = best_calibration(inputs.fp32, inputs.run32, path, inputs.calibration, plan, inputs.spec,
                                            weights.reduce_range)
    a, b = inputs.test_logits, logits_of([run8], inputs.test, inputs.spec)[0]
    labels = np.asarray(inputs.test.labels)
    pa, pb = softmax(a, inputs.temperature), softmax(b, inputs.temperature)
    acc32, acc8 = float((a.argmax(1) == labels).mean()), float((b.argmax(1) == labels).mean())
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    facts = {"test_accuracy": acc8, "fp32_test_accuracy": acc32, "top1_agreement": agree,
             "mean_abs_dprob": float(np.abs(pa - pb).mean()), "max_abs_diff_vs_fp32": float(np.abs(a - b).max())}
    drop = (acc32 - acc8) * 100
    if drop > plan.max_drop_points or agree < plan.min_agreement:
        path.unlink()
        return None, (f"{weights.variant} ({weights.weights}, {choice.name}): test accuracy {acc8:.4f} against fp32 "
                      f"{acc32:.4f} ({points_change(drop)}, export.int8_max_drop {plan.max_drop_points}), top-1 "
                      f"agreement {agree:.4f} (export.int8_min_agreement {plan.min_agreement}) on {len(labels)} test "
                      "images on this CPU: shipped without the int8 variant")
    speedup = _speedup(inputs.run32, run8, inputs.canary)
    facts["speedup_vs_fp32"] = speedup
    if speedup < plan.min_speedup:  # MobileNetV3's hard-swish and squeeze-excite run slower quantized on CPUs
        path.unlink()
        return None, (f"{weights.variant}: int8 runs at {speedup:.2f}x fp32's images per second on this CPU "
                      f"(export.int8_min_speedup {plan.min_speedup}): shipped without the int8 variant")
    probs32 = softmax(inputs.run32(inputs.canary), inputs.temperature)
    probs8 = softmax(run8(inputs.canary), inputs.temperature)
    write_canary(staging / weights.canary, inputs.canary, probs32, probs8)
    canary_facts = Canary(file=weights.canary, sha256=sha256_of(staging / weights.canary), n=len(inputs.canary),
                          top1_agreement=float((probs32.argmax(1) == probs8.argmax(1)).mean()),
                          max_prob_delta=MAX_PROB_DELTA)
    return Variant(file=weights.file, sha256=sha256_of(path), n=len(labels),
                   limits={"max_drop_points": plan.max_drop_points, "top1_agreement": plan.min_agreement},
                   calibration=Calibration(method=choice.method, images=len(inputs.calibration), format="QDQ",
                                           validation_agreement_by_method=on_val, activations="uint8",
                                           weights=weights.weights, fp32_layers=choice.fp32_layers),
                   canary=canary_facts, **facts), None


def points_change(drop: float) -> str:
    """drop: fp32's accuracy less int8's, in points; said the way it went (a refusal for agreement may come with an
    int8 file that scores higher than fp32, which read "-0.53 points lower")."""
    if round(drop, 2) == 0:
        return "not lower"
    return f"{abs(drop):.2f} points {'lower' if drop > 0 else 'higher'}"


def best_calibration(fp32: Path, run32: Runner, out: Path, calibration: np.ndarray, plan: Int8Plan,
                     spec: PreprocessSpec, reduce_range: bool) -> tuple[Choice, dict[str, float], Runner]:
    """Quantize with each calibration method, every layer in int8 first; where no method's top-1 agrees with fp32 on
    the validation split as often as the gate asks (min_agreement), again with the first plan.fp32_layers[i] layers
    left in fp32, in the order given, up to the first that does: a model whose first layers are the sensitive ones
    (the CIFAR-10 subset's, bench/RESULTS.md) ships a mixed file instead of none, and a model that passes in int8
    costs nothing more. Keeps at `out` the file that agrees most on validation (the earliest tried wins a tie:
    fewest fp32 layers, the first method listed); the test split only judges it. Returns its choice, every tried
    file's agreement by name and its runner."""
    tried: dict[Choice, tuple[Path, Runner, float]] = {}
    reference = None
    for layers in plan.fp32_layers:
        files = {Choice(m, layers): out.with_name(f".{m}-{layers}-{out.name}") for m in plan.methods}
        for choice, file in files.items():
            quantize(fp32, file, calibration, choice.method, reduce_range, layers)
        runners = [runner(file) for file in files.values()]
        scored = logits_of(([run32] if reference is None else []) + runners, plan.val, spec)  # one decoding pass
        if reference is None:
            reference, *scored = scored
        for (choice, file), run, z in zip(files.items(), runners, scored, strict=True):
            tried[choice] = (file, run, float((z.argmax(1) == reference.argmax(1)).mean()))
        if max(agreement for *_, agreement in tried.values()) >= plan.min_agreement:
            break
    best = max(tried, key=lambda c: tried[c][2])  # the first of equals: the earliest tried
    for choice, (file, *_) in tried.items():
        if choice == best:
            file.rename(out)  # the session read the file when it opened: a rename leaves it as it is
        else:
            file.unlink()
    return best, {c.name: a for c, (*_, a) in tried.items()}, tried[best][1]


def _speedup(run32, run8, images: np.ndarray, rounds: int = 3, seconds: float = 0.5) -> float:
    """int8 img/s over fp32 img/s on these images (batches of BATCH), alternating rounds, median ratio: a noisy
    neighbour slows both alike."""
    ratios = []
    for _ in range(rounds):
        rates = []
        for run in (run32, run8):
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
                run(images)
                n += 1
            rates.append(n / elapsed)
        ratios.append(rates[1] / rates[0])
    return float(np.median(ratios))
