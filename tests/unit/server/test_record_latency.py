"""RecordLatency: one observation per request, labelled by route template and the status sent."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from focalserve_server.api.middleware import RecordLatency


def app_with(observed: list[tuple[str, str, str, float]]) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict:
        return {"id": item_id}

    @app.get("/broken")
    async def broken() -> dict:
        raise RuntimeError("boom")

    app.add_middleware(RecordLatency, observe=lambda *labels: observed.append(labels))
    return app


async def test_routes_are_labelled_by_template_and_status():
    observed: list[tuple[str, str, str, float]] = []
    transport = httpx.ASGITransport(app=app_with(observed), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/42")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/broken")).status_code == 500

    labels = [entry[:3] for entry in observed]
    assert labels == [("GET", "/items/{item_id}", "200"), ("GET", "unmatched", "404"), ("GET", "/broken", "500")]
    assert all(entry[3] >= 0 for entry in observed)
