"""Faults: a stuck model turns /readyz false until it moves again; SIGTERM drains in-flight
requests and flushes index state; Triton killed mid-load fails requests cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from focalserve_devtools.launch import LocalTriton, gateway_process, running_gateway
from tests.helpers.images import b64, shape_png

IMAGE = b64(shape_png())


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture()
def triton(model_repository, tmp_path):
    server = LocalTriton.on_free_ports(model_repository, tmp_path / "triton")
    server.work_dir.mkdir()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


async def embed_many(url: str, count: int) -> list[httpx.Response | Exception]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/embed", json={"model": "tiny", "inputs": [
            {"image": IMAGE, "instruction": f"question {i}"}]}) for i in range(count)), return_exceptions=True)


def test_a_stuck_model_turns_readiness_false_until_it_moves(triton, model_repository, tmp_path):
    with running_gateway(model_repository, tmp_path / "gateway.log", backend="triton", triton_url=triton.grpc_url,
                         data_dir=str(tmp_path / "data"), stall_timeout_s="1", triton_timeout_s="60") as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        triton.process.send_signal(signal.SIGSTOP)  # the process is up but makes no progress
        with httpx.Client(base_url=url, timeout=60) as client:
            pending = client.build_request("POST", "/embed", json={"model": "tiny", "inputs": [{"text": "stuck"}]})

            async def send_and_probe() -> tuple[int, int]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as async_client:
                    request = asyncio.create_task(async_client.send(pending))
                    await asyncio.sleep(2.5)
                    probe = (await async_client.get("/readyz")).status_code
                    triton.process.send_signal(signal.SIGCONT)
                    return probe, (await request).status_code

            probe, result = asyncio.run(send_and_probe())
        assert probe == 503
        assert result == 200  # the stuck call completes once the model moves again
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "readiness after recovery")


def test_triton_killed_mid_load_fails_requests_cleanly(triton, model_repository, tmp_path):
    with running_gateway(model_repository, tmp_path / "gateway.log", backend="triton", triton_url=triton.grpc_url,
                         data_dir=str(tmp_path / "data"), triton_timeout_s="10") as url:

        async def load_and_kill() -> list:
            task = asyncio.create_task(embed_many(url, 64))
            await asyncio.sleep(0.3)
            triton.kill()
            return await task

        results = asyncio.run(load_and_kill())
        statuses = [r.status_code for r in results if isinstance(r, httpx.Response)]
        assert len(statuses) == 64 and set(statuses) <= {200, 503}, set(statuses)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 503, 20, "readiness to fail")
        triton.start()
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "recovery")
        assert all(r.status_code == 200 for r in asyncio.run(embed_many(url, 8)))


def test_sigterm_drains_in_flight_requests_and_flushes_indexes(model_repository, tmp_path):
    data_dir = tmp_path / "data"
    with gateway_process(model_repository, tmp_path / "gateway.log", data_dir=str(data_dir)) as (url, process):
        client = httpx.Client(base_url=url, timeout=60)
        client.post("/collections", json={"name": "drain", "model": "tiny"})
        client.post("/collections/drain/items", json={"items": [{"id": f"i{n}", "image": IMAGE} for n in range(8)]})
        client.post("/collections/drain/conditions", json={"instruction": "what colour?"})
        wait_for(lambda: client.get("/collections/drain/conditions").json()[0]["status"] == "ready", 60, "build")
        client.post("/collections/drain/items", json={"items": [{"id": "late", "image": IMAGE}]})

        async def requests_then_sigterm() -> list:
            task = asyncio.create_task(embed_many(url, 48))
            await asyncio.sleep(0.05)
            os.kill(process.pid, signal.SIGTERM)
            return await task

        results = asyncio.run(requests_then_sigterm())
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status names it
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and all(r.status_code == 200 for r in answered)  # accepted requests completed
    refused = [r for r in results if not isinstance(r, httpx.Response)]
    assert all(isinstance(e, httpx.TransportError) for e in refused)  # the rest were refused, not half-answered
    snapshots = list((data_dir / "indexes").glob("*.stamp"))
    assert snapshots, "index snapshots were not flushed at shutdown"
    with running_gateway(model_repository, tmp_path / "again.log", data_dir=str(data_dir)) as url:
        hits = httpx.post(f"{url}/search", json={"collection": "drain", "condition": "what colour?",
                                                 "query": {"item_id": "late"}, "k": 20}).json()["results"]
        assert len(hits) == 8
