#!/usr/bin/env bash
# The GPU checks, as one command on a device machine (an H200 here), from the repository root:
#   the `gpu`-marked tests (CUDA embedded backend in fp32/fp16/bf16, nvJPEG preprocessing, faiss GPU);
#   export sizes and fused vs hand-written attention on CUDA;
#   the first request after ready (warm-up on and off) and the batch-1 overhead over the raw forward;
#   the serving benchmark, gateway (embedded backend) against the raw forward, ViT-B-32 and
#   ViT-L-14-336 FocalLens, fp32 and fp16, PIL and GPU preprocessing;
#   K instructions on one image, full against readout conditioning (benchmarks/conditions.py).
# Logs and JSON go to $OUT (the device tool's output folder) or benchmarks/results/gpu. Uses the
# machine's python3 (with CUDA torch) and the wheels benchmarks/gpu/wheels.sh put in .whl/.
# Families are exported on the machine itself: its torch may differ from ours.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e ./client -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m benchmarks.export_bench --device cuda --speed-models ViT-B-32 ViT-L-14-336 --batches 1 64 --json "$OUT/export.json" 2>&1 | tee "$OUT/export.log"
python3 -m benchmarks.latency --models vitb32 vitl14-336 --device cuda --dtype float16 2>&1 \
    | tee "$OUT/latency.log"
python3 -m benchmarks.conditions --models vitb32 vitl14-336 --device cuda --dtype float16 2>&1 \
    | tee "$OUT/conditions.log"
cp benchmarks/results/conditions.json "$OUT/conditions.json"
for run in "float16 cuda" "float16 pil" "float32 cuda"; do
    set -- $run
    python3 -m benchmarks.serving --models vitb32 vitl14-336 --systems raw gateway-embedded --no-variants \
        --device cuda --dtype "$1" --preprocess-device "$2" --concurrency 1 16 64 --seconds 4 2>&1 \
        | tee "$OUT/serving_$1_$2.log"
    cp benchmarks/results/serving.json "$OUT/serving_$1_$2.json"
done
