"""Faults: a stuck model turns /readyz false until it moves again; SIGTERM drains in-flight
requests and flushes index state; Triton killed mid-load fails requests cleanly.

Signals go to real processes: the gateway's own for SIGTERM, the session's tritonserver (see
`triton` in tests/conftest.py) for SIGSTOP and SIGKILL, with the gateway in front of it in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from focalserve_devtools.launch import LocalTriton, gateway_process, running_gateway
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.helpers.loop import wait_for

IMAGE = b64(shape_png())


def triton_gateway(triton: LocalTriton, data_dir: Path, repository: Path, **settings: Any) -> InProcessGateway:
    return InProcessGateway(gateway_settings(repository, data_dir, backend="triton", triton_url=triton.grpc_url,
                                             **settings))


def embed_request(client: httpx.AsyncClient, index: int) -> Coroutine[Any, Any, httpx.Response]:
    inputs = [{"image": IMAGE, "instruction": f"question {index}"}]
    return client.post("/embed", json={"model": "tiny", "inputs": inputs})


async def embed_many(client: httpx.AsyncClient, count: int,
                     after_first_answer: Callable[[], None] | None = None) -> list[httpx.Response | BaseException]:
    """`count` concurrent requests; `after_first_answer` runs once the first is answered, so the
    gateway has certainly accepted and served requests by then, with the rest still in flight
    (a fixed sleep sometimes fired before any request had been accepted)."""
    requests = [asyncio.create_task(embed_request(client, i)) for i in range(count)]
    if after_first_answer is not None:
        await asyncio.wait(requests, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        after_first_answer()
    return await asyncio.gather(*requests, return_exceptions=True)


async def embed_many_then_sigterm(url: str, count: int, pid: int) -> list[httpx.Response | BaseException]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await embed_many(client, count, after_first_answer=lambda: os.kill(pid, signal.SIGTERM))


async def test_a_stuck_model_turns_readiness_false_until_it_moves(triton, model_repository, tmp_path):
    with triton_gateway(triton, tmp_path / "data", model_repository, stall_timeout_s=1, triton_timeout_s=60) as gateway:
        assert gateway.get("/readyz").status_code == 200
        triton.process.send_signal(signal.SIGSTOP)  # the process is up but makes no progress
        async with gateway.async_client() as client:
            request = asyncio.create_task(client.post("/embed", json={"model": "tiny", "inputs": [{"text": "stuck"}]}))
            deadline = time.monotonic() + 15  # the stall timeout is 1 s: probe until it shows, not for a fixed time
            while (probe := (await client.get("/readyz")).status_code) != 503 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            triton.process.send_signal(signal.SIGCONT)
            result = (await request).status_code
        assert probe == 503
        assert result == 200  # the stuck call completes once the model moves again
        wait_for(lambda: gateway.get("/readyz").status_code == 200, 30, "readiness after recovery", 0.1)


async def test_triton_killed_mid_load_fails_requests_cleanly(triton, model_repository, tmp_path):
    with triton_gateway(triton, tmp_path / "data", model_repository, triton_timeout_s=10) as gateway:
        async with gateway.async_client() as client:
            results = await embed_many(client, 64, after_first_answer=triton.kill)
        statuses = [r.status_code for r in results if isinstance(r, httpx.Response)]
        assert len(statuses) == 64 and set(statuses) <= {200, 503}, set(statuses)
        wait_for(lambda: gateway.get("/readyz").status_code == 503, 20, "readiness to fail", 0.1)
        triton.start()
        wait_for(lambda: gateway.get("/readyz").status_code == 200, 60, "recovery", 0.1)
        async with gateway.async_client() as client:
            assert all(r.status_code == 200 for r in await embed_many(client, 8))


def test_sigterm_drains_in_flight_requests_and_flushes_indexes(model_repository, tmp_path):
    data_dir = tmp_path / "data"
    with gateway_process(model_repository, tmp_path / "gateway.log", data_dir=str(data_dir)) as (url, process):
        client = httpx.Client(base_url=url, timeout=60)
        client.post("/collections", json={"name": "drain", "model": "tiny"})
        client.post("/collections/drain/items", json={"items": [{"id": f"i{n}", "image": IMAGE} for n in range(8)]})
        client.post("/collections/drain/conditions", json={"instruction": "what colour?"})
        wait_for(lambda: client.get("/collections/drain/conditions").json()[0]["status"] == "ready", 60, "build")
        client.post("/collections/drain/items", json={"items": [{"id": "late", "image": IMAGE}]})

        results = asyncio.run(embed_many_then_sigterm(url, 48, process.pid))
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status names it
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and all(r.status_code == 200 for r in answered)  # accepted requests completed
    refused = [r for r in results if not isinstance(r, httpx.Response)]
    assert all(isinstance(e, httpx.TransportError) for e in refused)  # the rest were refused, not half-answered
    snapshots = list((data_dir / "indexes").glob("*.index"))  # written by the replica as it stops
    assert snapshots, "index snapshots were not flushed at shutdown"
    with running_gateway(model_repository, tmp_path / "again.log", data_dir=str(data_dir)) as url:
        hits = httpx.post(f"{url}/search", json={"collection": "drain", "condition": "what colour?",
                                                 "query": {"item_id": "late"}, "k": 20}).json()["results"]
        assert len(hits) == 8
