"""The gateway on a real tritonserver (python backend on the CPU) serving the exported repository."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from focalserve_devtools.launch import LocalTriton, running_gateway
from tests.helpers.images import b64, shape_png

INPUTS = [
    {"image": b64(shape_png((200, 40, 40))), "instruction": "what colour is the shape?"},
    {"image": b64(shape_png((40, 40, 200), box=14)), "instruction": "which shape is this?"},
    {"text": "a red circle"},
]


@pytest.fixture(scope="module")
def triton(model_repository, tmp_path_factory):
    server = LocalTriton.on_free_ports(model_repository, tmp_path_factory.mktemp("triton"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton_gateway(triton, model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "gateway-triton.log"
    with running_gateway(model_repository, log, backend="triton", triton_url=triton.grpc_url,
                         data_dir=str(tmp_path_factory.mktemp("data")), triton_timeout_s="10") as url:
        yield url


def embed(url: str, inputs: list[dict], model: str = "tiny") -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"model": model, "inputs": inputs}, timeout=60)


def test_triton_embeddings_equal_the_embedded_backend(triton_gateway, gateway_url):
    via_triton = embed(triton_gateway, INPUTS).json()
    in_process = embed(gateway_url, INPUTS).json()
    for a, b in zip(via_triton["data"], in_process["data"]):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
        assert a["space"] == b["space"]
    clip = [{"image": INPUTS[0]["image"]}, {"text": "red"}]
    np.testing.assert_allclose([d["embedding"] for d in embed(triton_gateway, clip, "tinyclip").json()["data"]],
                               [d["embedding"] for d in embed(gateway_url, clip, "tinyclip").json()["data"]],
                               atol=1e-5)


def test_metadata_comes_from_tritons_model_config(triton_gateway, gateway_url):
    assert httpx.get(f"{triton_gateway}/models").json() == httpx.get(f"{gateway_url}/models").json()


async def test_tritons_dynamic_batcher_merges_requests(triton, model_repository, tmp_path):
    """With the gateway's own batching off (batch size 1), every item is one Triton request:
    fewer executions than requests means Triton's dynamic batcher merged them."""
    with running_gateway(model_repository, tmp_path / "gateway.log", backend="triton", triton_url=triton.grpc_url,
                         data_dir=str(tmp_path / "data"), max_batch_size="1") as url:
        before = triton.statistics("tiny_image")
        images = [b64(shape_png((i * 7 % 255, 90, 200 - i))) for i in range(48)]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/embed", json={"model": "tiny", "inputs": [
                {"image": image, "instruction": "what colour is the shape?"}]}) for image in images))
    assert all(r.status_code == 200 for r in responses)
    after = triton.statistics("tiny_image")
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == 48 and executions < requests


def test_killing_triton_gives_503_and_restarting_recovers(triton, triton_gateway):
    assert embed(triton_gateway, INPUTS[:1]).status_code == 200
    triton.kill()
    response = embed(triton_gateway, [{"image": INPUTS[0]["image"], "instruction": "a fresh instruction"}])
    assert response.status_code == 503 and response.json()["error"]["code"] == "backend_unavailable"
    assert "Retry-After" in response.headers
    ready = httpx.get(f"{triton_gateway}/readyz")
    assert ready.status_code == 503 and "backend" in ready.json()["detail"]
    triton.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{triton_gateway}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "gateway did not become ready again"
        time.sleep(0.5)
    assert embed(triton_gateway, INPUTS).status_code == 200


def test_the_http_protocol_gives_the_same_embeddings(triton, model_repository, gateway_url, tmp_path):
    with running_gateway(model_repository, tmp_path / "gateway.log", backend="triton", triton_url=triton.http_url
                         .removeprefix("http://"), triton_protocol="http", data_dir=str(tmp_path / "data")) as url:
        via_http = embed(url, INPUTS).json()["data"]
    in_process = embed(gateway_url, INPUTS).json()["data"]
    for a, b in zip(via_http, in_process):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
