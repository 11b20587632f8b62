"""onnxruntime's CUDA provider on a machine without a GPU: the reason is said, device=cuda refuses to serve on CPU."""
from __future__ import annotations

import logging

import pytest

from contract.card import load_card
from serving.runtime import OnnxClassifier, cuda_available, prepare_cuda


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
