"""OpenVINO's own int8 path on the same model.onnx, run in its own environment by bench/int8_peers.py.

python openvino_int8.py MODEL.onnx DATA.npz OUT.json --batches 1 8 32 --rounds 2 --seconds 2

DATA.npz holds what the parent prepared with the product's own preprocessing: `calibration` (the export's calibration
images, uint8 [n,S,S,3]), `test` (the scored test split as model input) and `labels`. Here: the ONNX graph read by
OpenVINO's converter, quantized by NNCF's post-training quantization (`nncf.quantize`, its documented defaults: the
performance preset, calibration on the same images), both compiled for the CPU plugin with the LATENCY hint (one stream
on every core: one call at a time, as onnxruntime is timed in the parent), each twice: at the plugin's own inference
precision (bfloat16 where the CPU has AMX or AVX512-BF16, fp32 file or not) and with f32 forced, then scored on the test
images and timed at each batch size (median of rounds). With --ort FILE..., also onnxruntime with its OpenVINO execution
provider (the onnxruntime-openvino package) on those files: the product's own fp32 and int8 files, run by OpenVINO
through the API the service already uses. Writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import nncf
import numpy as np
import openvino as ov


def compiled(core: ov.Core, model: ov.Model, precision: str | None = None) -> ov.CompiledModel:
    """precision None: the CPU plugin's own choice, bfloat16 on CPUs with AMX or AVX512-BF16 even for an fp32
    graph; "f32" keeps float32 (what onnxruntime's CPU provider runs)."""
    config = {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_PRECISION_HINT": precision} if precision else {})
    return core.compile_model(model, "CPU", config)


def infer(model: ov.CompiledModel):
    """One of OpenVINO's infer requests as a function: uint8 images -> logits."""
    request = model.create_infer_request()
    return lambda images: request.infer({"images": images})["logits"].copy()


def ort_openvino(path: str):
    """onnxruntime with OpenVINO's execution provider on the CPU: uint8 images -> logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=[("OpenVINOExecutionProvider", {"device_type": "CPU"})])
    return lambda images: session.run(["logits"], {"images": images})[0]


def ort_version() -> str:
    from importlib.metadata import version
    return version("onnxruntime-openvino")


def logits(run, images: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch]) for i in range(0, len(images), batch)])


def rate(run, batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
        run(batch)
        n += 1
    return n * len(batch) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--ort", nargs="*", default=[], metavar="NAME=FILE")
    args = ap.parse_args()
    data = np.load(args.data)
    size = data["test"].shape[1]
    core = ov.Core()
    # the graph's optional heatmap input keeps its default (the top class); only `images` is fed
    fp32 = ov.convert_model(args.model, input=[("images", ov.PartialShape([-1, size, size, 3]), ov.Type.u8)])
    t0 = time.perf_counter()
    int8 = nncf.quantize(fp32, nncf.Dataset(list(data["calibration"][:, None])),
                         subset_size=len(data["calibration"]))
    quantize_s = time.perf_counter() - t0
    models = {"fp32": compiled(core, fp32), "int8": compiled(core, int8),
              "fp32:f32": compiled(core, fp32, "f32"), "int8:f32": compiled(core, int8, "f32")}
    precision = {k: m.get_property("INFERENCE_PRECISION_HINT").to_string() for k, m in models.items()}
    runs = {k: infer(m) for k, m in models.items()}
    scores = {k: logits(run, data["test"]) for k, run in runs.items()}
    ep_scores, ep_errors = {}, {}
    for name, path in (a.split("=", 1) for a in args.ort):
        try:  # the execution provider may refuse a graph that OpenVINO's own converter takes
            run = ort_openvino(path)
            ep_scores[f"ep:{name}"] = logits(run, data["test"])
            runs[f"ep:{name}"] = run
        except Exception as exc:  # reported in the table; the rest is still measured
            ep_errors[f"ep:{name}"] = " ".join(str(exc).split())[-300:]
    rng = np.random.default_rng(0)
    speed: dict[str, dict[int, list[float]]] = {k: {b: [] for b in args.batches} for k in runs}
    for _ in range(args.rounds):
        for b in args.batches:
            batch = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
            for k, run in runs.items():
                speed[k][b].append(rate(run, batch, args.seconds))
    labels = data["labels"]
    result = {"openvino": ov.get_version(), "nncf": nncf.__version__, "quantize_s": quantize_s,
              "ort_version": ort_version(),
              "accuracy": {k: float((z.argmax(1) == labels).mean()) for k, z in scores.items()},
              "agreement": float((scores["int8"].argmax(1) == scores["fp32"].argmax(1)).mean()),
              "agreement_f32": float((scores["int8:f32"].argmax(1) == scores["fp32:f32"].argmax(1)).mean()),
              "precision": precision,
              "ort_openvino": {k: float((z.argmax(1) == labels).mean()) for k, z in ep_scores.items()},
              "ort_openvino_errors": ep_errors,
              "img_s": {k: {str(b): statistics.median(v) for b, v in by.items()} for k, by in speed.items()}}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
