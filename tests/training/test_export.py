"""The artifact: contract names/dtypes/shapes, dynamic batch, parity, sha256, skew gate, atomic publish."""
import hashlib
import json
import threading

import numpy as np
import onnx
import pytest

from contract.publish import install, promote
from training.checkpoint import atomic_save, load
from training.export import ExportError, ort_session
from training.job import export_job

pytestmark = pytest.mark.slow


def test_contract(artifact):
    card = json.loads((artifact / "model.json").read_text())
    m = onnx.load(str(artifact / "model.onnx"))
    inp, classes = m.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]
    # heatmap_classes: optional (its default, [1, 0], is an initializer: no heatmaps unless asked)
    assert classes.name == "heatmap_classes" and classes.type.tensor_type.elem_type == onnx.TensorProto.INT64
    default = next(i for i in m.graph.initializer if i.name == "heatmap_classes")
    assert list(default.dims) == [1, 0]
    assert [o.name for o in m.graph.output] == ["logits", "probabilities", "heatmaps", "heatmap_labels"]
    assert not list((artifact).glob("*.data")), "no external data for a small model"
    # the pooling exports as one ReduceMean, not an as_strided (a Gather over indices from Range(0, batch))
    ops = [n.op_type for n in m.graph.node]
    assert "Range" not in ops and ops.count("ReduceMean") == 1, sorted(set(ops))
    session = ort_session(artifact / "model.onnx")
    for n in (1, 3, 8):
        logits = session.run(["logits"], {"images": np.zeros((n, 64, 64, 3), np.uint8)})[0]
        assert logits.shape == (n, 2) and logits.dtype == np.float32
    assert card["classes"] == ["ants", "bees"] and card["image_size"] == 64 and card["resize_size"] == 73
    assert card["sha256"] == hashlib.sha256((artifact / "model.onnx").read_bytes()).hexdigest()
    for key in ("batch_1", "batch_8", "batch_5"):
        assert card["parity"][key]["max_abs_diff"] <= 1e-3 and card["parity"][key]["argmax_equal"]
    assert card["skew_gate"]["gap_points"] <= 0.3 and card["skew_gate"]["n"] == 80
    assert {"torch", "onnxruntime", "onnx"} <= set(card["libraries"])
    assert (artifact.parent / "LATEST").read_text().strip() == artifact.name


def test_normalisation_is_one_scale_and_one_shift_spanning_a_whole_row(artifact):
    """onnxruntime broadcasts a per-channel constant ([1, 1, 1, 3]) over NHWC in 3-element spans, 10x slower than
    over NCHW, and the int8 graph runs its normalisation in NHWC (training.export.ContractWrapper.normalized): the
    constants before the first convolution must span a row of pixels in either layout."""
    m = onnx.load(str(artifact / "model.onnx"))
    constants = {i.name: list(i.dims) for i in m.graph.initializer}
    nodes = list(m.graph.node)
    before_conv = nodes[:next(k for k, n in enumerate(nodes) if n.op_type == "Conv")]
    arithmetic = [n for n in before_conv if n.op_type in ("Mul", "Add", "Sub", "Div")]
    assert [n.op_type for n in arithmetic] == ["Mul", "Add"], [n.op_type for n in arithmetic]
    for node in arithmetic:
        assert [constants[i] for i in node.input if i in constants] == [[1, 1, 64, 3]], node


def test_a_model_directory_resolves_through_latest(artifact, tmp_path):
    from contract.card import ArtifactError
    from contract.publish import resolve_path
    assert resolve_path(artifact) == artifact  # a version directory as is
    assert resolve_path(artifact.parent) == artifact  # artifacts/<name> follows LATEST
    with pytest.raises(ArtifactError, match="LATEST"):
        resolve_path(tmp_path / "nothing-published")


def test_fp16_variant(artifact):
    from contract.card import ArtifactError, load_card, model_file
    card = json.loads((artifact / "model.json").read_text())
    fp16 = card["variants"]["fp16"]
    assert fp16["max_abs_diff_vs_fp32"] <= 5e-2 and fp16["top1_agreement"] >= 0.99 and fp16["n"] == 80
    m = onnx.load(str(artifact / fp16["file"]))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert (artifact / fp16["file"]).stat().st_size < 0.6 * (artifact / "model.onnx").stat().st_size
    path = model_file(artifact, load_card(artifact), "fp16")
    logits = ort_session(path).run(["logits"], {"images": np.zeros((3, 64, 64, 3), np.uint8)})[0]
    assert logits.shape == (3, 2) and logits.dtype == np.float32
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        with pytest.raises(ArtifactError, match="sha256"):
            model_file(artifact, load_card(artifact), "fp16")
    finally:
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))


def test_skew_gate_catches_wrong_preprocessing(trained, tmp_path):
    """A checkpoint whose recorded preprocessing differs from the one it was evaluated with (resize 160, not 73):
    the served accuracy drifts from the PyTorch one and the export stops."""
    cfg, result = trained
    bundle = load(cfg.output_dir / "final" / "model.pt")
    bundle["preprocess"] = dict(bundle["preprocess"], resize_size=160)
    ckpt = tmp_path / "skewed.pt"
    atomic_save(bundle, ckpt)
    before = sorted(p.name for p in (cfg.artifacts_dir / cfg.name).iterdir())
    with pytest.raises(ExportError, match="skew"):
        export_job(ckpt, None)
    after = sorted(p.name for p in (cfg.artifacts_dir / cfg.name).iterdir())
    assert before == after, "a failed export must publish nothing and leave no staging directory"


def test_publish_is_atomic_under_a_concurrent_reader(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    seen, stop, problems = [], threading.Event(), []

    def reader():
        while not stop.is_set():
            latest = root / "LATEST"
            if latest.exists():
                version = root / latest.read_text().strip()
                files = {p.name: p.read_bytes() for p in version.iterdir()}
                if set(files) != {"model.onnx", "model.json"} or len(files["model.onnx"]) != 1 << 20:
                    problems.append(sorted(files))
                seen.append(version.name)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        staging = root / f".staging-{i}"
        staging.mkdir()
        with open(staging / "model.onnx", "wb") as f:
            for _ in range(16):  # written slowly, in pieces
                f.write(b"x" * (1 << 16))
        (staging / "model.json").write_text("{}")
        promote(root, install(staging, root, f"v{i:03d}").name)
    stop.set()
    t.join()
    assert not problems and len(set(seen)) > 1
