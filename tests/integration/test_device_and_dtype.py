"""Where the embedded backend runs: FOCALSERVE_DEVICE and FOCALSERVE_DTYPE, refused in words when
they cannot work; a reduced dtype still answers float32, unit-length embeddings; models warm up
before the gateway serves. bfloat16 on the CPU exercises the dtype path in CI; CUDA tests are `gpu`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from focalserve_server.config import Settings
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

INPUTS = [{"image": b64(shape_png((220, 30, 30))), "instruction": "what colour is the shape?"},
          {"image": b64(shape_png((30, 30, 220), box=12)), "instruction": "which shape is this?"},
          {"text": "red"}]


def embeddings(client: httpx.Client) -> np.ndarray:
    response = client.post("/embed", json={"model": "tiny", "inputs": INPUTS})
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize(("setting", "value"), [("device", "tpu"), ("device", "cuda:x"), ("dtype", "int8")])
def test_unknown_devices_and_dtypes_are_refused(setting, value):
    with pytest.raises(ValidationError, match=setting):
        Settings(**{setting: value})


def test_the_serve_command_names_the_bad_setting_without_a_traceback(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "focalserve_server", "serve", "--device", "tpu"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "device" in result.stderr and "Traceback" not in result.stderr


def test_a_cuda_device_this_machine_lacks_is_refused_at_start(model_repository: Path, tmp_path: Path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last: absent on any machine
    settings = gateway_settings(model_repository, tmp_path / "data", device=missing)
    with pytest.raises(RuntimeError, match=f"FOCALSERVE_DEVICE={missing}"), InProcessGateway(settings):
        pass


def test_bfloat16_answers_unit_float32_embeddings_close_to_float32(gateway, model_repository: Path, tmp_path: Path):
    reference = embeddings(gateway)
    settings = gateway_settings(model_repository, tmp_path / "data", dtype="bfloat16")
    with InProcessGateway(settings) as reduced:
        models = {model["name"]: model for model in reduced.get("/models").json()["models"]}
        assert (models["tiny"]["device"], models["tiny"]["dtype"]) == ("cpu", "bfloat16")
        vectors = embeddings(reduced)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert (np.sum(vectors * reference, axis=1) >= 0.99).all()


def test_every_model_warms_up_before_the_gateway_serves(gateway, model_repository: Path, tmp_path: Path):
    warmed = [line for line in gateway.get("/metrics").text.splitlines()
              if line.startswith("focalserve_warmup_seconds{")]
    names = {model["name"] for model in gateway.get("/models").json()["models"]}
    assert len(warmed) == 3 + 2  # tiny: image, instruction, text; tinyclip: image, text
    assert all(float(line.split()[-1]) > 0 for line in warmed) and names == {"tiny", "tinyclip"}
    with InProcessGateway(gateway_settings(model_repository, tmp_path / "data", warmup=False)) as cold:
        assert "focalserve_warmup_seconds{" not in cold.get("/metrics").text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_embeddings_match_the_cpu(gateway, model_repository: Path, tmp_path: Path, dtype: str):
    reference = embeddings(gateway)
    with InProcessGateway(gateway_settings(model_repository, tmp_path / "data", device="cuda", dtype=dtype)) as gpu:
        assert gpu.get("/models").json()["models"][0]["device"] == "cuda"
        vectors = embeddings(gpu)
    assert (np.sum(vectors * reference, axis=1) >= 0.99).all()
