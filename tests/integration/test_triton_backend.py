"""The gateway on a real tritonserver (python backend on the CPU) serving the exported repository.

Triton is a real process (the session's shared one: see `triton` in tests/conftest.py), killed and
restarted for real; the gateway in front of it runs in this process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc

from focalserve_devtools.launch import LocalTriton
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

INPUTS = [
    {"image": b64(shape_png((200, 40, 40))), "instruction": "what colour is the shape?"},
    {"image": b64(shape_png((40, 40, 200), box=14)), "instruction": "which shape is this?"},
    {"text": "a red circle"},
]


@pytest.fixture(scope="module")
def triton_gateway(shared_triton: LocalTriton, model_repository: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    settings = gateway_settings(model_repository, tmp_path_factory.mktemp("data"), backend="triton",
                                triton_url=shared_triton.grpc_url, triton_timeout_s=10)
    with InProcessGateway(settings) as client:
        yield client


def embed(gateway: httpx.Client, inputs: list[dict], model: str = "tiny") -> httpx.Response:
    return gateway.post("/embed", json={"model": model, "inputs": inputs})


def test_triton_embeddings_equal_the_embedded_backend(triton, triton_gateway, gateway):
    via_triton = embed(triton_gateway, INPUTS).json()
    in_process = embed(gateway, INPUTS).json()
    for a, b in zip(via_triton["data"], in_process["data"]):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
        assert a["space"] == b["space"]
    clip = [{"image": INPUTS[0]["image"]}, {"text": "red"}]
    np.testing.assert_allclose([d["embedding"] for d in embed(triton_gateway, clip, "tinyclip").json()["data"]],
                               [d["embedding"] for d in embed(gateway, clip, "tinyclip").json()["data"]],
                               atol=1e-5)


def test_metadata_comes_from_tritons_model_config(triton, triton_gateway, gateway):
    """The same families from Triton's model configs as from the files; only where they run differs
    (Triton decides its own device and precision, so the gateway does not claim to know them)."""
    placement = ("device", "dtype")

    def family_facts(client) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in placement} for m in client.get("/models").json()["models"]]

    assert family_facts(triton_gateway) == family_facts(gateway)
    for served_by_triton, in_process in zip(triton_gateway.get("/models").json()["models"],
                                            gateway.get("/models").json()["models"], strict=True):
        assert [served_by_triton[k] for k in placement] == [None, None]
        assert [in_process[k] for k in placement] == ["cpu", "float32"]


async def test_tritons_dynamic_batcher_merges_requests(triton, model_repository, tmp_path):
    """With the gateway's own batching off (batch size 1), every item is one Triton request:
    fewer executions than requests means Triton's dynamic batcher merged them."""
    settings = gateway_settings(model_repository, tmp_path / "data", backend="triton", triton_url=triton.grpc_url,
                                max_batch_size=1)
    with InProcessGateway(settings) as gateway:
        before = triton.statistics("tiny_image")
        images = [b64(shape_png((i * 7 % 255, 90, 200 - i))) for i in range(48)]
        async with gateway.async_client() as client:
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
    ready = triton_gateway.get("/readyz")
    assert ready.status_code == 503 and "backend" in ready.json()["detail"]
    triton.start()
    deadline = time.monotonic() + 60
    while triton_gateway.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "gateway did not become ready again"
        time.sleep(0.1)
    assert embed(triton_gateway, INPUTS).status_code == 200


def test_the_http_protocol_gives_the_same_embeddings(triton, model_repository, gateway, tmp_path):
    settings = gateway_settings(model_repository, tmp_path / "data", backend="triton",
                                triton_url=triton.http_url.removeprefix("http://"), triton_protocol="http")
    with InProcessGateway(settings) as via_http_gateway:
        via_http = embed(via_http_gateway, INPUTS).json()["data"]
    in_process = embed(gateway, INPUTS).json()["data"]
    for a, b in zip(via_http, in_process):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)


def test_images_reach_triton_through_its_system_shared_memory(triton, model_repository, gateway, tmp_path):
    """uint8 pixels written into a /dev/shm region the gateway registered; the request names the offset."""
    settings = gateway_settings(model_repository, tmp_path / "data", backend="triton", triton_url=triton.grpc_url,
                                triton_shared_memory=True)
    with InProcessGateway(settings) as shared:
        via_shared_memory = embed(shared, INPUTS).json()["data"]
        regions = tritonclient.grpc.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(
            as_json=True).get("regions", {})
        assert [name for name in regions if name.startswith("focalserve-pixels-")]
    in_process = embed(gateway, INPUTS).json()["data"]
    for a, b in zip(via_shared_memory, in_process, strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
    after = tritonclient.grpc.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    assert not [name for name in after.get("regions", {}) if name.startswith("focalserve-pixels-")]  # unregistered
