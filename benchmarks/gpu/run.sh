#!/usr/bin/env bash
# The GPU checks, as one command on a device machine (an H200 here), from the repository root, in
# this order:
#   the `gpu`-marked tests (CUDA embedded backend in fp32/fp16/bf16, nvJPEG preprocessing, faiss GPU);
#   bulk ingest of ViT-B-32, full and readout families, under 4 conditions in fp16 on 256 px photo-like
#   JPEGs, against the goal of >= 2,500 images/s per GPU (benchmarks/ingest.py). Ray (~70 MB of
#   wheels) cannot travel to the device within a call's 64 MiB, so there only the model-bound ceiling
#   runs (decode and preprocess on every core, ahead of `Embedder.embed` on the GPU; the ingest and
#   HTTP parts print why they were skipped) unless the machine's python has ray;
#   fronts and the engine: ViT-B-32 and ViT-L-14-336 fp16 through 1, 4, 8 and 16 workers at concurrency
#   64 and 256, against the raw forward of the same run (benchmarks/fronts.py);
#   what a new batch size costs the exported model, TorchScript's optimising executor on and off;
#   the serving benchmark, gateway (embedded backend) against the raw forward, ViT-B-32 and
#   ViT-L-14-336 FocalLens in fp16, GPU preprocessing (and PIL for ViT-B-32);
#   K instructions on one image, full against readout conditioning (benchmarks/conditions.py);
#   the first request after ready (warm-up on and off) and the batch-1 overhead over the raw forward;
#   export sizes and fused vs hand-written attention on CUDA.
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

# Each step has its own time limit, most valuable first, so that one that overruns leaves the others
# their share of a device lease (about 9 minutes of work in all; a step's time includes exporting
# the families it is the first to need).
step() { local seconds=$1 log=$2; shift 2; echo "== $log: $*"; timeout -k 5 "$seconds" "$@" 2>&1 | tee "$OUT/$log.log"; }
step 100 gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_device_and_dtype.py \
    tests/integration/test_device_preprocessing.py tests/unit/server/test_indexes.py
# The ingest's throughput per GPU. Without ray on the machine (Ray cannot be brought here: see the top)
# only the ceiling part runs; the vitb32-full and -readout export it makes is the conditions step's too.
step 90 ingest_vitb32 python3 -m benchmarks.ingest --geometry vitb32 --conditions 4 --device cuda --dtype float16 \
    --parts ceiling ingest --store sqlite --images 4000 --prepare-threads "$(nproc)" --ceiling-batch 256 \
    --timeout-s 25 --json "$OUT/ingest_vitb32.json"
fronts() {
    step "$1" "fronts_$2_c$3" python3 -m benchmarks.fronts --family "$2" --concurrency "$3" --workers "${@:4}" \
        --device cuda --dtype float16 --preprocess-device cuda --seconds 3 --json "$OUT/fronts_$2_c$3.json"
}
fronts 120 vitb32 64 1 4 8 16
fronts 100 vitb32 256 1 8 16
fronts 100 vitl14-336 64 1 4 16
step 70 batch_shapes python3 -m benchmarks.batch_shapes --models vitb32 vitl14-336 --device cuda --dtype float16 \
    --json "$OUT/batch_shapes.json"
# A benchmark's JSON is copied only when its step finished: the committed one is the CPU's.
serving() {
    step "$1" "serving_float16_$2" python3 -m benchmarks.serving --models "${@:3}" \
        --systems raw gateway-embedded --no-variants --device cuda --dtype float16 \
        --preprocess-device "$2" --concurrency 1 64 --seconds 3 \
        && cp benchmarks/results/serving.json "$OUT/serving_float16_$2.json"
}
serving 150 cuda vitb32 vitl14-336
serving 50 pil vitb32
step 60 conditions python3 -m benchmarks.conditions --models vitb32 vitl14-336 --device cuda --dtype float16 \
    --seconds 2 && cp benchmarks/results/conditions.json "$OUT/conditions.json"
step 50 latency python3 -m benchmarks.latency --models vitb32 vitl14-336 --device cuda --dtype float16
step 40 export python3 -m benchmarks.export_bench --device cuda --speed-models ViT-B-32 ViT-L-14-336 \
    --batches 1 64 --seconds 2 --json "$OUT/export.json"
