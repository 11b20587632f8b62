"""The model a serving process runs: the pinned version's card and the onnxruntime session `precision` picks.

One decision for the whole process, made once at start: which file (contract.precision: int8 on CPU where its canary
passes on this node, fp16 on CUDA, else fp32) on which execution provider; each session runs a warm-up probe as it
opens, and a model that does not match its card is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from contract.card import ModelCard, load_card
from contract.precision import Chosen, choose
from contract.publish import resolve

from .cpus import cpu_allotment
from .runtime import OnnxClassifier, prepare_cuda
from .settings import Settings

log = logging.getLogger("bentoml.serving")  # the logger bentoml serve shows at INFO


@dataclass(frozen=True)
class Loaded:
    card: ModelCard
    chosen: Chosen
    # run_mode adaptive on CPU: the chosen file again on one thread, for the runs under load, `lanes` of them at
    # once (None: every run on the chosen session)
    single_thread: OnnxClassifier | None = None
    lanes: int = 1

    @property
    def session(self) -> OnnxClassifier:
        return self.chosen.session


def load(s: Settings) -> Loaded:
    """The card and session of the version `s` names (ArtifactError, OSError or the session's error otherwise)."""
    version_dir = resolve(s.model_dir, s.artifacts_root, s.model_name)
    card = load_card(version_dir, verify=s.verify_sha256)

    def open_session(path: Path) -> OnnxClassifier:
        return OnnxClassifier(path, len(card.classes), card.image_size, s.device, intra_threads(s),
                              s.inter_op_threads, s.spinning, max_batch=s.max_batch_size)

    def pick(on_cuda: bool) -> Chosen:
        return choose(version_dir, card, s.precision, on_cuda, open_session, lambda clf, x: clf.run(x),
                      s.verify_sha256)

    # where CUDA's provider library cannot load (no driver: onnxruntime-gpu on a CPU node) choose as on CPU at once,
    # rather than open a CUDA-minded choice first and open again
    on_cuda = s.device != "cpu" and prepare_cuda() is None
    chosen = pick(on_cuda)
    if on_cuda and chosen.session.provider != "CUDAExecutionProvider":
        chosen = pick(False)  # the library loaded but found no usable GPU: choose as on CPU (fp16 there is slow)
    (log.warning if chosen.canary_passed is False else log.info)(
        "serving %s on %s: %s", chosen.path.name, chosen.session.provider, chosen.note)
    lanes = chosen.session.intra_threads or os.cpu_count() or 1  # 0: onnxruntime's default, one per core
    single = None
    if s.run_mode == "adaptive" and chosen.session.provider == "CPUExecutionProvider" and lanes > 1:
        # with one thread each, or on a GPU, there is nothing to share out
        single = OnnxClassifier(chosen.path, len(card.classes), card.image_size, "cpu", 1, s.inter_op_threads, "off",
                                max_batch=s.max_batch_size)
        log.info("run_mode adaptive: a lone request runs on %d onnxruntime threads; under load up to %d runs at "
                 "once, one thread each", lanes, lanes)
    if card.monitoring is None:
        log.warning("model.json has no monitoring block (exported before it existed): no label-free accuracy "
                    "estimate or drift reference for %s %s", card.name, card.version)
    return Loaded(card, chosen, single, lanes if single is not None else 1)


def intra_threads(s: Settings) -> int:
    """onnxruntime's threads in this process: intra_op_threads (0: the CPU allotment) shared out between the API
    workers, each of which runs a session of its own."""
    if s.api_workers == 1:
        return s.intra_op_threads  # 0: the allotment, or onnxruntime's own choice (serving.runtime)
    return max(1, (s.intra_op_threads or cpu_allotment() or os.cpu_count() or 1) // s.api_workers)
