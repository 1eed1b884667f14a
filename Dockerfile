# syntax=docker/dockerfile:1.7
# The FocalServe gateway image; the same image runs training jobs (`focalserve train|export`) and bulk
# ingests on a Ray cluster (`focalserve ingest`, deploy/k8s/ingest-rayjob.yaml).
#   docker build -t focalserve .                          # CUDA torch (runs on CPU too)
#   docker build -t focalserve --build-arg TORCH_VARIANT=cpu .   # smaller, CPU-only torch
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN if [ "$TORCH_VARIANT" = "cpu" ]; then \
        pip install --index-url "$TORCH_CPU_INDEX" torch==2.14.1 torchvision==0.29.1; \
    fi
COPY client/ client/
COPY pyproject.toml README.md constraints.txt ./
COPY server/ server/
COPY training/ training/
COPY family/ family/
COPY devtools/ devtools/
COPY ingest/ ingest/
RUN pip install -c constraints.txt ./client ".[training,ingest]"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 focalserve \
    && mkdir -p /data /models \
    && chown focalserve:focalserve /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FOCALSERVE_HOST=0.0.0.0 \
    FOCALSERVE_PORT=8000 \
    FOCALSERVE_MODEL_REPOSITORY=/models \
    FOCALSERVE_DATA_DIR=/data
USER focalserve
WORKDIR /home/focalserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["focalserve"]
CMD ["serve"]
