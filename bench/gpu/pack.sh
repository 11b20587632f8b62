#!/usr/bin/env bash
# Here (no GPU): pack what bench/gpu/run.sh needs on the GPU machine into pieces the device tool can carry.
#
#   bash bench/gpu/pack.sh      -> .gpu/train.tar, .gpu/ort-0, .gpu/ort-1-00 ... and .gpu/ort.sha256 (.gpu/ is git-ignored)
#
# The device tool carries at most 64 MiB a call, the working tree included, and ignored paths stay on the warm
# machine between calls (30 s idle), so the pieces travel in this order:
#   call 1 (training): carry .gpu/train.tar .gpu/ort-0 .gpu/ort.sha256 -> `DEADLINE_S=360 bash bench/gpu/run.sh env
#   train bench-train resume train-compiled` (2026-11-30; on the next lease `env train resume-free ddp`: the rest is
#   measured, and the service needs the model `train` publishes)
#   calls 2..n: carry .gpu/ort-1-00, .gpu/ort-1-01, ... one per call, each a no-op `ls .gpu` (each took seconds), but
#   the last, which runs `DEADLINE_S=... bash bench/gpu/run.sh service infer serve`.
# train.tar: every wheel of bench/gpu/wheels.txt but onnxruntime-gpu (no dependencies resolved: the list is complete
# against the machine's image), and the demo dataset with each photo scaled down to 288 px on its shorter side
# (training reads it at 256 px, the service at 224; the originals, 46 MB, would not fit beside the wheels).
# ort-*: the onnxruntime-gpu wheel (255 MB) cut in pieces, the first small enough to ride with train.tar.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/hymenoptera_data}
PY=${PY:-.venv/bin/python}
CALL_MIB=62  # what one call may carry, less a margin for the working tree (git ls-files: about 2 MiB)
rm -rf .gpu && mkdir -p .gpu/stage/wheels .gpu/stage/data .gpu/ort
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$1" "${@:2}"; }
grep -v '^#' bench/gpu/wheels.txt | grep -v '^onnxruntime-gpu==' | xargs bash -c "$(declare -f download); \
    $(declare -p platforms); download .gpu/stage/wheels \"\$@\"" _
download .gpu/ort "$(grep '^onnxruntime-gpu==' bench/gpu/wheels.txt)"
"$PY" - "$DATA" .gpu/stage/data/hymenoptera_data <<'PY'
import sys
from pathlib import Path
from PIL import Image, ImageOps
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(p for p in src.rglob("*") if p.is_file()):
    out = dst / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(f) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((10_000, 288) if im.width > im.height else (288, 10_000))  # 288 px on the shorter side
        im.save(out, "JPEG", quality=92)
PY
tar -C .gpu/stage -cf .gpu/train.tar .
wheel=$(cd .gpu/ort && ls)
(cd .gpu/ort && sha256sum "$wheel") >.gpu/ort.sha256
first=$(( CALL_MIB * 1024 * 1024 - $(stat -c %s .gpu/train.tar) ))
head -c "$first" ".gpu/ort/$wheel" >.gpu/ort-0
tail -c +$((first + 1)) ".gpu/ort/$wheel" | split -d -b 60m - .gpu/ort-1-
rm -rf .gpu/stage .gpu/ort
ls -l .gpu
echo "call 1 carries: .gpu/train.tar .gpu/ort-0 .gpu/ort.sha256; then one per call: $(cd .gpu && ls ort-1-* | tr '\n' ' ')"
