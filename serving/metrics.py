"""The service's Prometheus metrics, all prefixed imgcls_, through bentoml.metrics (multi-process safe).

BentoML already exports request counts, durations, in-flight requests and the adaptive batch size; these add what
only the model knows. Every metric is documented in the README (its "Metrics" table).
"""
from __future__ import annotations

import bentoml
import numpy as np

from contract import monitoring
from contract.card import ModelCard

P = "imgcls_"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

inference_seconds = bentoml.metrics.Histogram(
    name=P + "inference_seconds", documentation="onnxruntime time per batch", buckets=LATENCY_BUCKETS,
    labelnames=["provider"])
batch_size = bentoml.metrics.Histogram(
    name=P + "batch_size", documentation="images per onnxruntime run", buckets=BATCH_BUCKETS)
preprocess_seconds = bentoml.metrics.Histogram(
    name=P + "preprocess_seconds", documentation="decode + resize + crop time per image", buckets=LATENCY_BUCKETS)
predictions = bentoml.metrics.Counter(
    name=P + "predictions_total", documentation="predictions by top-1 class", labelnames=["predicted"])
confidence = bentoml.metrics.Histogram(
    name=P + "confidence", documentation="top-1 probability of each prediction",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
heatmaps = bentoml.metrics.Counter(
    name=P + "heatmaps_total", documentation="heatmaps answered by /explain, by format (grid | png) and method (cam | "
    "occlusion: one model run per cell)", labelnames=["format", "method"])
invalid_requests = bentoml.metrics.Counter(
    name=P + "invalid_requests_total", documentation="rejected inputs by reason", labelnames=["reason"])
feedback = bentoml.metrics.Counter(
    name=P + "feedback_total", documentation="ground-truth feedback by outcome and actual class",
    labelnames=["outcome", "actual"])
model_info = bentoml.metrics.Gauge(
    name=P + "model_info", documentation="1 for the loaded model (labels: name, version, execution provider, "
    "precision served: fp32 | int8 | fp16)", labelnames=["name", "version", "provider", "precision"],
    multiprocess_mode="max")
int8_canary = bentoml.metrics.Gauge(
    name=P + "int8_canary_passed", documentation="1 where the artifact's int8 variant passed the canary check on "
    "this node, 0 where it failed and fp32 serves instead (absent: no int8 variant)", labelnames=["name", "version"],
    multiprocess_mode="min")
offline_accuracy = bentoml.metrics.Gauge(
    name=P + "offline_test_accuracy", documentation="test-split accuracy recorded in model.json",
    labelnames=["name", "version"], multiprocess_mode="max")
# Accuracy without labels (contract.monitoring, README "Accuracy without labels"): estimated accuracy over a window
# = increase(atc_confident_total{score}) / increase(confidence_count); drift: predicted shares vs reference shares.
atc_confident = bentoml.metrics.Counter(
    name=P + "atc_confident_total", documentation="predictions whose score reaches the model's ATC threshold "
    "(score: mc = top-1 probability, ne = negative entropy)", labelnames=["score"])
atc_threshold = bentoml.metrics.Gauge(
    name=P + "atc_threshold", documentation="ATC thresholds from model.json, fitted on the validation split",
    labelnames=["score"], multiprocess_mode="max")
reference_share = bentoml.metrics.Gauge(
    name=P + "reference_class_share", documentation="share of each predicted class on the test split (model.json): "
    "the reference for prediction drift", labelnames=["predicted"], multiprocess_mode="max")


class ModelSeries:
    """The series of one loaded model, labelled and looked up once (a lookup takes a lock and a dict): set at load,
    counted once per onnxruntime run rather than per request."""

    def __init__(self, card: ModelCard, provider: str, precision: str, canary_passed: bool | None) -> None:
        model_info.labels(name=card.name, version=card.version, provider=provider, precision=precision).set(1)
        if canary_passed is not None:
            int8_canary.labels(name=card.name, version=card.version).set(canary_passed)
        if card.test_accuracy is not None:
            offline_accuracy.labels(name=card.name, version=card.version).set(card.test_accuracy)
        # every class's prediction counter (and the ATC counters) start at 0, so PromQL sees a class nobody has
        # predicted yet as 0, not as missing
        self.predicted = [predictions.labels(predicted=c) for c in card.classes]
        for counter in self.predicted:
            counter.inc(0)
        self.thresholds = card.monitoring.thresholds if card.monitoring is not None else {}
        self.confident = {name: atc_confident.labels(score=name) for name in self.thresholds}
        for name, value in self.thresholds.items():
            atc_threshold.labels(score=name).set(value)
            self.confident[name].inc(0)
        for c, share in (card.monitoring.reference_shares if card.monitoring is not None else {}).items():
            reference_share.labels(predicted=c).set(share)
        self.inference = inference_seconds.labels(provider=provider)

    def run(self, seconds: float, probs: np.ndarray, counted: np.ndarray) -> None:
        """One onnxruntime run: its time, its batch size and its predictions, the rows where `counted` (an
        occlusion map's hidden copies are not predictions)."""
        self.inference.observe(seconds)
        batch_size.observe(len(probs))
        probs = probs[counted]
        best = probs.argmax(axis=1)
        for i, n in enumerate(np.bincount(best, minlength=len(self.predicted))):
            if n:
                self.predicted[i].inc(int(n))
        for p in probs[np.arange(len(probs)), best]:
            confidence.observe(float(p))
        for name, values in monitoring.scores(probs).items() if self.thresholds else ():
            confident = int((values >= self.thresholds[name]).sum())
            if confident:
                self.confident[name].inc(confident)
