#!/usr/bin/env bash
# Here (no GPU): pack what bench/gpu/run.sh needs on the GPU machine into parts the device tool can carry.
#
#   bash bench/gpu/pack.sh            -> .gpu/part-aa, part-ab, ... (each <= 60 MiB; .gpu/ is git-ignored)
#
# One tar of: the wheels of bench/gpu/wheels.txt for Python 3.12 (no dependencies resolved: the list is complete
# against the machine's image) and the demo dataset (../shared/data does not travel). The device tool carries at
# most 64 MiB a call, and ignored paths stay on the warm machine between calls (30 s), so the parts go one per call
# (carry [".gpu/part-aa"], then [".gpu/part-ab"], ...), each call a no-op `ls .gpu`; the last call runs
# `bash bench/gpu/run.sh`, which joins them.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/hymenoptera_data}
rm -rf .gpu && mkdir -p .gpu/stage/wheels .gpu/stage/data
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
grep -v '^#' bench/gpu/wheels.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d .gpu/stage/wheels
cp -r "$DATA" .gpu/stage/data/
tar -C .gpu/stage -cf - . | split -b 60m - .gpu/part-
rm -rf .gpu/stage
ls -l .gpu
echo "carry one part per call, in order: $(cd .gpu && ls part-* | tr '\n' ' ')"
