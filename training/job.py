"""The training Job end to end, in named steps: intake (data, run identity, data report) -> two phases ->
evaluation and report -> final checkpoint -> export, gates and publish."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from contract import monitoring
from contract.card import Metrics, Tuning, load_card
from contract.files import write_atomic
from contract.monitoring import Monitoring
from contract.occlusion import occluded, occlusion_maps
from contract.precision import INT8_VARIANTS
from contract.preprocess import PreprocessSpec
from contract.scores import softmax
from contract.storage import is_url

from . import checkpoint, data_report, diagnostics, distributed, metrics, run_identity
from .calibrate import fit_temperature
from .config import TrainConfig
from .data import ImageSet, Splits, load_splits
from .export import ContractWrapper, build_artifact
from .final_model import FinalModel
from .loader import eval_loader
from .log import event
from .model import Classifier, build_model
from .object_store import local_data, publish_to_store
from .publish import GateLimits, PublishRefused
from .quantize import Int8Plan, model_inputs
from .report import Explain, summary_table, write_report
from .runtime import resolve_device, setup_runtime
from .seeds import derive, seed_all
from .train import Trainer
from .transforms import eval_transform


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=2, default=str))


def eval_images(images: ImageSet, spec: PreprocessSpec, count: int | None = None) -> np.ndarray:
    """uint8 NHWC images as the model contract takes them (for parity checks)."""
    n = len(images) if count is None else min(count, len(images))
    tf = eval_transform(spec)
    return np.stack([tf(images.source(i)).permute(1, 2, 0).numpy() for i in range(n)])


def logits_of(model: Classifier, images: ImageSet, cfg: TrainConfig, device: torch.device):
    loader = eval_loader(images, eval_transform(cfg.data.spec), cfg.data.eval_batch_size,
                         cfg.data.num_workers, device.type == "cuda")
    return metrics.predict(model, loader, device, cfg.channels_last)


def evaluate_model(model: Classifier, splits: Splits, cfg: TrainConfig, device: torch.device,
                   history: list[dict], extra: dict | None = None) -> tuple[dict, float, Monitoring]:
    """Test metrics (+ temperature fitted on val), the monitoring block (ATC thresholds fitted on val after
    temperature scaling, drift reference from test), report/ with plots and report.html; returns (metrics, T,
    monitoring)."""
    val_logits, val_labels = logits_of(model, splits.val, cfg, device)
    temperature = fit_temperature(val_logits, val_labels) if cfg.evaluate.temperature_scaling else 1.0
    scored = splits.scored_test()  # without the test images that have a copy in train (issue 29)
    logits, labels = logits_of(model, scored, cfg, device)
    test = metrics.full(logits, labels, splits.classes, temperature)
    test["ece_uncalibrated"] = metrics.full(logits, labels, splits.classes)["ece"]
    if splits.test_copies:
        copied_logits, copied_labels = logits_of(model, splits.test.subset(splits.test_copies), cfg, device)
        right = (logits.argmax(1) == labels).sum() + (copied_logits.argmax(1) == copied_labels).sum()
        test["with_copies"] = {"accuracy": float(right / len(splits.test)), "n": len(splits.test),
                               "copies_in_train": len(splits.test_copies)}
    watch = monitoring.fit(softmax(val_logits, temperature), val_labels, softmax(logits, temperature), labels,
                           splits.classes)
    findings = diagnostics.review(history, train_counts(splits), cfg)
    for finding in findings:
        event(f"warning: {finding.message}", diagnostic=finding.kind)
    write_report(Path(cfg.output_dir) / "report", scored, logits, labels, test, history,
                 cfg.model_dump(mode="json") | {"name": cfg.name},
                 (extra or {}) | {"monitoring": watch.model_dump(mode="json")},
                 temperature, heatmaps_of(model, scored, cfg.data.spec, device, temperature),
                 [f.as_dict() for f in findings])
    return test, temperature, watch


def train_counts(splits: Splits) -> dict[str, int]:
    counts = np.bincount(np.asarray(splits.train.labels, dtype=np.int64), minlength=len(splits.classes))
    return {name: int(n) for name, n in zip(splits.classes, counts)}


def heatmaps_of(model: Classifier, images: ImageSet, spec: PreprocessSpec, device: torch.device,
                temperature: float = 1.0) -> Explain:
    """The report's heatmaps: the crops as the artifact takes them and the top class's two maps, as the service's
    /explain makes them: Grad-CAM by the exported graph's own module (ContractWrapper; tests/training/test_heatmaps.py
    holds the ONNX graph equal) and occlusion at the same grid (contract.occlusion: one run per cell, more faithful
    on fine-tuned heads, bench/RESULTS.md), on the probabilities the service answers (the fitted temperature)."""
    wrapper = ContractWrapper(model.eval(), temperature).eval()

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([wrapper(torch.from_numpy(chunk).to(device))[1].cpu().numpy()
                               for chunk in np.array_split(pixels, -(-len(pixels) // 64))])

    def explain(idx: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        crops = model_inputs(images, spec, idx)
        with torch.no_grad():
            _, probs, maps, labels = wrapper(torch.from_numpy(crops).to(device),
                                             torch.full((len(idx), 1), -1, dtype=torch.long, device=device))
            grid = tuple(maps.shape[2:])
            # one crop's copies at a time, as the service does: 49 copies (7 MB at 224 px), not 49 per crop
            after = np.concatenate([probabilities(occluded(c, grid)) for c in crops])
        occlusion = occlusion_maps(probs.cpu().numpy(), after, labels.cpu().numpy(), grid)
        return crops, maps[:, 0].cpu().numpy(), occlusion[:, 0]
    return explain


def prepared_splits(cfg: TrainConfig) -> tuple[Splits, dict]:
    """The splits as training sees them: copies across splits found, data.duplicates applied, the test images with
    a copy in train marked (export and evaluate score the same test images the run reported)."""
    return data_report.prepare(load_splits(local_data(cfg.data, cfg.output_dir), cfg.seed), cfg.data.duplicates,
                               cfg.data.near_duplicate_bits, cfg.data.image_size)


def intake(cfg: TrainConfig, d: distributed.Dist, out: Path, restart: bool) -> tuple[Splits, dict]:
    """Load and check the data, make `out` this run's directory (run identity), then log and write the data report."""
    splits, report = prepared_splits(cfg)
    if d.main:
        how = run_identity.claim(out, run_identity.identity(cfg, splits), restart)
        event(f"run directory {out}: " + {"new": "new run", "same": "same data and config (resumes if it has a "
                                          "checkpoint)", "restarted": "--restart: previous outputs removed"}[how])
        data_report.log(report)
        data_report.write(report, out / "report")
        write_json(out / "skipped_images.json", report["skipped"])
    if d.enabled:
        torch.distributed.barrier()  # no rank resumes before rank 0 has checked (or cleared) the directory
    return splits, report


def sample_test_images(test: ImageSet, per_class: int, folder: Path) -> list[dict]:
    """A few test images per class as files (in-memory sets are written as PNGs), for the demo's requests."""
    picks = []
    for y, name in enumerate(test.classes):
        for i in [i for i, label in enumerate(test.labels) if label == y][:per_class]:
            if test.paths is not None:
                path = test.paths[i]
            else:
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{name}-{i}.png"
                test.image(i).save(path)
            picks.append({"path": str(path), "label": name})
    return picks


def train_job(cfg: TrainConfig, restart: bool = False, tuning: Tuning | None = None,
              features: Path | None = None) -> dict:
    """tuning: how training.tune chose this config's recipe, for the report and model.json; features: the phase-1
    feature cache to load (training.tune's, already built; its key refuses it where it was built otherwise)."""
    d = distributed.init("cuda" if resolve_device(cfg.device).type == "cuda" else "cpu")
    try:
        return _train(cfg, d, restart, tuning, features)
    finally:
        distributed.finish(d)


def _train(cfg: TrainConfig, d: distributed.Dist, restart: bool, tuning: Tuning | None,
           features: Path | None) -> dict:
    device = setup_runtime(cfg, d.local_rank)
    out = Path(cfg.output_dir)
    if d.main:
        checkpoint.check_writable(out)
    if d.enabled:
        event("process", all_ranks=True, pid=os.getpid(), world_size=d.world, device=str(device))
    splits, data_summary = intake(cfg, d, out, restart)
    model, trainer = fit(cfg, splits, device, d, features)
    digests = distributed.gather_digests(model, d)
    if not d.main:
        return {"rank": d.rank}  # rank 0 alone evaluates, reports and exports
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    extra = {"data": data_summary} | ({"tuning": tuning.model_dump(mode="json")} if tuning else {})
    test, temperature, watch = evaluate_model(model, splits, cfg, device, trainer.state.history, extra)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    final = save_final(model, trainer, splits, cfg, test, temperature, watch, tuning)
    print_summary(trainer, test, out, watch)
    result = {"test_accuracy": test["accuracy"], "final": str(out / "final" / "model.pt"),
              "history": trainer.state.history, "world_size": d.world, "weights_sha256_per_rank": digests,
              "test_samples": sample_test_images(splits.test, 3, out / "samples")}
    if cfg.export.enabled:
        export_and_publish(model, final, splits, cfg, result)
    write_json(out / "final" / "result.json", result)
    return result


def new_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> Classifier:
    """The model before training; the head's initial weights a function of the seed alone, so a search's trial
    (training.tune) and the full run of the recipe it chose start from the same weights."""
    seed_all(derive(cfg.seed, "model init"))
    model = build_model(cfg.model, num_classes).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def fit(cfg: TrainConfig, splits: Splits, device: torch.device, d: distributed.Dist,
        features: Path | None = None) -> tuple[Classifier, Trainer]:
    model = new_model(cfg, len(splits.classes), device)
    trainer = Trainer(cfg, splits, model, device, d, features_path=features)
    trainer.fit()
    return model, trainer


def save_final(model: Classifier, trainer: Trainer, splits: Splits, cfg: TrainConfig, test: dict,
               temperature: float, watch: Monitoring, tuning: Tuning | None = None) -> FinalModel:
    """final/model.pt: weights with everything export and evaluate need (classes, config, preprocessing, metrics)."""
    st = trainer.state
    final = FinalModel(name=cfg.name, classes=splits.classes, config=cfg.model_dump(mode="json"),
                       preprocess=cfg.data.spec, history=st.history, skipped=splits.skipped,
                       metrics=Metrics(test=test, best_val={cfg.early_stop.metric: st.best, "at": st.best_where}),
                       temperature=temperature, monitoring=watch, state_dict=model.state_dict(), tuning=tuning)
    out = Path(cfg.output_dir) / "final"
    final.save(out / "model.pt")
    write_json(out / "metrics.json", final.metrics.model_dump(mode="json"))
    return final


def print_summary(trainer: Trainer, test: dict, out: Path, watch: Monitoring) -> None:
    print(summary_table(trainer.state.history))
    if trainer.cache_seconds is not None:  # phase-1 rows then time only the head; the backbone ran once, before
        print(f"phase 1 trained the head on cached backbone features, built in {trainer.cache_seconds:.1f} s")
    copies = test.get("with_copies")
    print(f"test accuracy {test['accuracy']:.4f}  macro F1 {test['macro_f1']:.4f}  (n={test['n']})  "
          + (f"[with the {copies['copies_in_train']} test images that have a copy in train: {copies['accuracy']:.4f}"
             f" (n={copies['n']})]  " if copies else "") + f"report {out / 'report' / 'report.html'}")
    check = watch.self_check  # what the service's label-free estimate would say on the test split
    print(f"estimated without labels on the test split: ATC-MC {check.atc_mc:.4f}  ATC-NE {check.atc_ne:.4f}  "
          f"AC {check.ac:.4f}  (true {check.accuracy:.4f})")
    fitted = watch.fitted_on
    if fitted.n < check.n:
        event(f"warning: the label-free estimate's thresholds rest on {fitted.n} validation images, fewer than the "
              f"test split's {check.n}: on data like validation the estimate is off by about "
              f"±{100 * fitted.standard_error:.1f} points from that alone; raise data.val_ratio",
              val_n=fitted.n, test_n=check.n)


def export_and_publish(model: Classifier, final: FinalModel, splits: Splits, cfg: TrainConfig, result: dict) -> None:
    try:
        result.update(artifact=str(export_final(model, final, splits, cfg)), published=True)
        print(f"published {result['artifact']}")
    except PublishRefused as exc:  # the version exists; the result says so before the job fails
        result.update(artifact=str(exc.version_dir), published=False, not_published_because=str(exc))
        write_json(Path(cfg.output_dir) / "final" / "result.json", result)
        raise


def export_final(model: Classifier, final: FinalModel, splits: Splits, cfg: TrainConfig) -> Path | str:
    """The published version: its directory, or its URL where artifacts_dir is an object store."""
    scored = splits.scored_test()  # the test images the metrics in final/model.pt were measured on
    if is_url(cfg.artifacts_dir):  # built here beside the store's published card, then uploaded
        return publish_to_store(cfg.artifacts_dir, final.name, Path(cfg.output_dir) / "artifacts_upload",
                                lambda root: build_version(model, final, scored, splits, cfg, root))
    return build_version(model, final, scored, splits, cfg, cfg.artifacts_dir)


def build_version(model: Classifier, final: FinalModel, scored: ImageSet, splits: Splits, cfg: TrainConfig,
                  root: Path) -> Path:
    published = build_artifact(model, final, scored, root,
                               eval_images(scored, final.preprocess, 8), cfg.export.opset,
                               cfg.export.skew_tolerance,
                               report_dir=Path(cfg.output_dir) / "report",
                               gate_limits=GateLimits(cfg.export.min_test_accuracy, cfg.export.max_regression,
                                                     cfg.export.majority_significance),
                               fp16_images=eval_images(scored, final.preprocess) if cfg.export.fp16 else None,
                               int8=Int8Plan(splits.train, splits.val, cfg.export.int8_calibration_images,
                                             tuple(cfg.export.int8_calibration), cfg.export.int8_max_drop,
                                             cfg.export.int8_min_agreement, cfg.export.int8_min_speedup,
                                             cfg.seed, tuple(cfg.export.int8_weights),
                                             tuple(cfg.export.int8_fp32_layers))
                               if cfg.export.int8 else None)
    card = load_card(published, verify=False)
    int8 = {k: v.model_dump(include={"test_accuracy", "fp32_test_accuracy", "top1_agreement", "mean_abs_dprob"})
            for k, v in card.variants.items() if k in INT8_VARIANTS}
    event("exported", artifact=str(published), skew_gap_points=card.skew_gate.gap_points,
          parity={k: v.model_dump() for k, v in card.parity.items()}, int8=int8 or None)
    return published


def load_final(path: Path) -> tuple[Classifier, FinalModel, TrainConfig]:
    final = FinalModel.load(path)
    cfg = TrainConfig.model_validate(final.config)
    cfg.model.weights = "none"  # the state dict carries the weights
    model = build_model(cfg.model, len(final.classes))
    model.load_state_dict(final.state_dict)
    return model.eval(), final, cfg


def export_job(checkpoint_path: Path, artifacts_dir: str | None) -> Path | str:
    model, final, cfg = load_final(checkpoint_path)
    if artifacts_dir is not None:
        cfg.artifacts_dir = artifacts_dir
    return export_final(model, final, prepared_splits(cfg)[0], cfg)


def evaluate_job(checkpoint_path: Path, data: Path | None = None, out: Path | None = None) -> Path:
    """Re-evaluate a trained checkpoint, optionally on another dataset with the same classes."""
    model, final, cfg = load_final(checkpoint_path)
    if data is not None:
        cfg.data.path = data
    if out is not None:
        cfg.output_dir = Path(out).parent if Path(out).name == "report" else Path(out)
    device = setup_runtime(cfg)
    splits = prepared_splits(cfg)[0]
    if splits.classes != final.classes:
        raise ValueError(f"dataset classes {splits.classes} differ from the model's {final.classes}")
    evaluate_model(model.to(device), splits, cfg, device, final.history)
    return Path(cfg.output_dir) / "report" / "report.html"
