"""`make stack` as a user runs it: tritonserver + gateway as processes, answering like `make serve`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np

from focalserve_devtools.launch import free_port, running_gateway, wait_until_ready
from tests.helpers.images import b64, shape_png

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [{"image": b64(shape_png()), "instruction": "what colour is the shape?"}, {"text": "red"}]


def test_make_stack_serves_the_same_embeddings_as_make_serve(demo_repository, tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "TRITON_GRPC_PORT": str(free_port()),
           "TRITON_HTTP_PORT": str(free_port()), "TRITON_METRICS_PORT": str(free_port()),
           "FOCALSERVE_DATA_DIR": str(tmp_path / "data")}
    with open(tmp_path / "stack.log", "wb") as log:
        stack = subprocess.Popen(["make", "--no-print-directory", "stack"], cwd=ROOT, env=env, stdout=log, stderr=log,
                                 start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/readyz", stack, 240, what=f"make stack (log: {tmp_path}/stack.log)", interval_s=1)
        via_triton = httpx.post(f"{url}/embed", json={"inputs": INPUTS}, timeout=60).json()["data"]
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(timeout=60)
    with running_gateway(demo_repository, tmp_path / "serve.log", data_dir=str(tmp_path / "data2")) as serve:
        embedded = httpx.post(f"{serve}/embed", json={"inputs": INPUTS}, timeout=60).json()["data"]
    for a, b in zip(via_triton, embedded):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
