"""Overload: a full queue answers 503 + Retry-After at once; a request past its deadline gets
503; after a burst the server is healthy and serves normally. Load is bounded in count and time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

IMAGES = [b64(shape_png((i * 9 % 255, 40, 200 - i))) for i in range(24)]


async def burst(gateway: InProcessGateway, requests: int, concurrency: int, deadline_s: float) -> list[httpx.Response]:
    """`requests` embed calls, at most `concurrency` in flight, all within `deadline_s`."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, index: int) -> httpx.Response:
        async with semaphore:
            return await client.post("/embed", json={"model": "tiny", "inputs": [
                {"image": IMAGES[index % len(IMAGES)], "instruction": f"instruction {index % 7}"}]})

    async with gateway.async_client() as client:
        return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(requests))), deadline_s)


def test_full_queues_refuse_at_once_and_the_server_recovers(model_repository: Path, tmp_path: Path):
    settings = gateway_settings(model_repository, tmp_path / "data", max_queue_size=2, max_batch_size=2,
                                max_delay_ms=20)
    with InProcessGateway(settings) as client:
        started = time.monotonic()
        responses = asyncio.run(burst(client, requests=240, concurrency=48, deadline_s=120))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, set(statuses)
        refused = [r for r in responses if r.status_code == 503]
        assert refused and all(r.headers["retry-after"] == "1" for r in refused)
        assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
        assert statuses.count(200) > 0 and time.monotonic() - started < 120
        assert client.get("/readyz").status_code == 200
        after = client.post("/embed", json={"model": "tiny", "inputs": [
            {"image": IMAGES[0], "instruction": "after the burst"}]})
        assert after.status_code == 200
        metrics = client.get("/metrics").text
        assert 'focalserve_rejected_total{model="tiny_image"}' in metrics or "focalserve_rejected_total" in metrics


def test_a_request_past_its_deadline_gets_503(model_repository: Path, tmp_path: Path):
    with InProcessGateway(gateway_settings(model_repository, tmp_path / "data", request_timeout_s=0.001)) as client:
        response = client.post("/embed", json={"model": "tiny", "inputs": [
            {"image": IMAGES[0], "instruction": "too slow"}] * 8})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "deadline_exceeded" and response.headers["retry-after"]
        assert client.get("/healthz").status_code == 200
