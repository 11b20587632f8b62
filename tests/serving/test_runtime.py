"""onnxruntime's CUDA provider on a machine without a GPU: the reason is said, device=cuda refuses to serve on CPU;
the padding to a few batch sizes that CUDA sessions do, forced on CPU; how the threads wait (the spinning setting)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from contract.card import load_card
from serving.runtime import OnnxClassifier, bucket, cuda_available, prepare_cuda


@pytest.fixture(scope="module")
def model(artifact):
    card = load_card(artifact)
    return artifact / "model.onnx", len(card.classes), card.image_size


def test_without_a_gpu_the_only_missing_library_is_the_driver():
    if not cuda_available():
        pytest.fail("the test environment has onnxruntime-gpu (train extra); plain onnxruntime is the cpu image's")
    reason = prepare_cuda()
    if reason is None:
        pytest.skip("a GPU driver is present: the CUDA provider loads")
    # preload_dlls found cuBLAS, cuRAND, cuDNN and the CUDA runtime; only the driver the device plugin mounts is absent
    assert "libcuda.so.1" in reason and "no NVIDIA driver" in reason, reason


def test_auto_serves_on_cpu_and_says_why(model, caplog):
    if prepare_cuda() is None:
        pytest.skip("a GPU driver is present")
    with caplog.at_level(logging.INFO, logger="bentoml.serving"):
        clf = OnnxClassifier(*model, device="auto")
    assert clf.provider == "CPUExecutionProvider"
    said = [r.getMessage() for r in caplog.records if "CUDA not used" in r.getMessage()]
    assert said and "libcuda.so.1" in said[0] and "serving on CPUExecutionProvider" in said[0], caplog.text


def test_device_cuda_never_falls_back_to_cpu(model):
    if prepare_cuda() is None:
        pytest.skip("a GPU driver is present")
    with pytest.raises(RuntimeError, match="device=cuda but onnxruntime cannot use CUDA: .*libcuda.so.1"):
        OnnxClassifier(*model, device="cuda")


def test_device_cpu_never_touches_cuda(model, caplog):
    with caplog.at_level(logging.INFO, logger="bentoml.serving"):
        clf = OnnxClassifier(*model, device="cpu")
    assert clf.provider == "CPUExecutionProvider" and "CUDA not used" not in caplog.text


def test_bucket_is_the_power_of_two_at_or_above():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33, 256)] == [1, 2, 4, 4, 8, 8, 16, 64, 256]


def test_cpu_sessions_do_not_pad(model):
    assert OnnxClassifier(*model, device="cpu", max_batch=64).buckets == []


def test_padded_sessions_run_power_of_two_batches_and_answer_as_unpadded(model, caplog):
    """What a CUDA session does (it pads by default there), forced on CPU: every batch up to max_batch runs at its
    bucket's size, each bucket ran once before the session was ready, and the answers are the unpadded ones."""
    with caplog.at_level(logging.INFO, logger="bentoml.serving"):
        padded = OnnxClassifier(*model, device="cpu", max_batch=6, pad=True)
    assert padded.buckets == [1, 2, 4, 8] and "those sizes warmed up" in caplog.text
    plain = OnnxClassifier(*model, device="cpu")
    seen = []
    real_run = padded.session.run  # the real session, its batch sizes recorded
    padded.session = SimpleNamespace(run=lambda names, feed: seen.append(len(feed["images"])) or real_run(names, feed))
    size = model[2]
    rng = np.random.default_rng(0)
    for n in (1, 3, 5, 8, 11):
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        got = padded.run(images)
        assert got.shape == (n, model[1])
        np.testing.assert_allclose(got, plain.run(images), rtol=1e-4, atol=1e-4)
    assert seen == [1, 4, 8, 8, 11], "batches pad to their bucket up to the largest; beyond it they run as they are"
    if padded.heatmaps:
        images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        maps = np.full((3, 1), -1, np.int64)
        for got, want in zip(padded.explain(images, maps), plain.explain(images, maps), strict=True):
            assert len(got) == 3
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spinning,allow,force_stop", [("off", "0", ""), ("in_runs", "", "1"), ("always", "", "")])
def test_spinning_setting_reaches_the_session_as_onnxruntime_reads_it(model, spinning, allow, force_stop):
    """off: threads sleep; in_runs: onnxruntime's default spinning, stopped when the last run returns; always: its
    default untouched. Read back from the session onnxruntime built, not from the options we passed."""
    options = OnnxClassifier(*model, device="cpu", spinning=spinning).session.get_session_options()

    def entry(key: str) -> str:  # "" where not set (onnxruntime raises)
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:
            return ""

    assert entry("session.intra_op.allow_spinning") == allow
    assert entry("session.force_spinning_stop") == force_stop


def test_the_skew_gates_scorer_imports_without_the_serving_extra():
    """The training image scores the export through serving.score (the skew gate) with the train extra only: no
    pydantic-settings, no BentoML. A module of that path that imports either breaks the image's export (as
    serving.runtime once did, for a type annotation)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['pydantic_settings'] = sys.modules['bentoml'] = None; "
            "import serving.score, serving.runtime")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
