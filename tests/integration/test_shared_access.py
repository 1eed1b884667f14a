"""Keys, grants and limits shared by two gateways (real uvicorn on 127.0.0.1) on one real PostgreSQL:
what one gateway's admin changes, the other enforces within its poll of the store, and a key's
limits hold for the two together, not for each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from focalserve_client import Client
from focalserve_client.schemas import KeyLimits
from focalserve_server.access import limits as shared_limits
from focalserve_server.access.grants import Principal
from focalserve_server.access.limits import SharedLimiter
from focalserve_server.collections.postgres import PostgresStore
from focalserve_server.errors import RateLimited
from focalserve_server.metrics import Metrics
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import gateway_settings, serving_in_thread

ADMIN = {"Authorization": "Bearer fs-shared-admin-71c2"}
POLL_S = 0.05


@pytest.fixture(scope="module")
def database(postgres_server) -> str:
    return postgres_server.create_database("shared_access")


@pytest.fixture(scope="module")
def gateways(model_repository: Path, database: str, tmp_path_factory) -> Iterator[tuple[str, str]]:
    work = tmp_path_factory.mktemp("shared-access")
    settings = [gateway_settings(model_repository, work / name, database_url=database, log_poll_interval_s=POLL_S,
                                 admin_key=ADMIN["Authorization"].split()[1]) for name in "ab"]
    with serving_in_thread(settings[0]) as a, serving_in_thread(settings[1]) as b:
        yield a, b


def make_key(url: str, name: str, grants: list[str], **limits: int) -> dict:
    body = {"name": name, "limits": limits,
            "grants": [dict(zip(("collections", "action"), g.rsplit(":", 1), strict=True)) for g in grants]}
    response = httpx.post(f"{url}/admin/keys", json=body, headers=ADMIN, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def status_until(url: str, key: str, wanted: int, timeout_s: float = 5.0) -> float:
    """Seconds until GET /collections with `key` answers `wanted` on the gateway at `url`."""
    start = time.monotonic()
    while httpx.get(f"{url}/collections", headers={"Authorization": f"Bearer {key}"}).status_code != wanted:
        assert time.monotonic() - start < timeout_s, f"{url} never answered {wanted}"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_key_made_revoked_or_regranted_on_one_gateway_holds_on_the_other(gateways):
    a, b = gateways
    for name in ("a-photos", "shared"):
        assert httpx.post(f"{a}/collections", json={"name": name, "model": "tiny"}, headers=ADMIN).status_code == 201
    key = make_key(a, "team-a", ["a-*:write"])
    status_until(b, key["key"], 200)
    team_a = {"Authorization": f"Bearer {key['key']}"}
    listed = httpx.get(f"{b}/collections", headers=team_a).json()["collections"]
    assert [c["name"] for c in listed] == ["a-photos"]
    assert httpx.get(f"{b}/collections/shared", headers=team_a).status_code == 404
    item = {"items": [{"id": "x", "image": b64(shape_png())}]}
    assert httpx.post(f"{b}/collections/a-photos/items", json=item, headers=team_a, timeout=30).status_code == 201
    regrant = {"grants": [{"collections": "shared", "action": "read"}]}
    assert httpx.put(f"{a}/admin/keys/{key['id']}/grants", json=regrant, headers=ADMIN).status_code == 200
    deadline = time.monotonic() + 5
    while httpx.get(f"{b}/collections/shared", headers=team_a).status_code != 200:
        assert time.monotonic() < deadline
    assert httpx.post(f"{b}/collections/a-photos/items", json=item, headers=team_a).status_code == 404
    assert httpx.delete(f"{a}/admin/keys/{key['id']}", headers=ADMIN).status_code == 204
    assert status_until(b, key["key"], 401) < 1.0  # within the poll interval, plus a request or two
    trail = httpx.get(f"{b}/admin/audit", headers=ADMIN).json()["entries"]
    assert [e["action"] for e in trail if e["target"] == key["id"]] == ["key.create", "key.grants", "key.revoke"]
    assert any(e["action"] == "items.add" and e["key"] == key["id"] for e in trail)


def test_a_request_quota_holds_across_both_gateways(gateways):
    a, b = gateways
    key = make_key(a, "metered", ["*:read"], requests=12, window_s=3600)
    status_until(b, key["key"], 200)  # one request of the twelve
    headers = {"Authorization": f"Bearer {key['key']}"}
    answers = [httpx.get(f"{(a, b)[i % 2]}/models", headers=headers) for i in range(30)]
    assert [r.status_code for r in answers].count(200) == 11
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert refused.headers["ratelimit-policy"] == '"requests";q=12;w=3600'
    assert refused.headers["ratelimit"].startswith('"requests";r=0;t=')


def test_an_image_quota_holds_across_both_gateways_and_the_sdk_waits_out_a_short_window(gateways):
    a, b = gateways
    key = make_key(a, "images", ["*:read"], images=4, window_s=3600)
    status_until(b, key["key"], 200)
    headers = {"Authorization": f"Bearer {key['key']}"}
    image = {"image": b64(shape_png()), "instruction": "what colour?"}
    body = {"model": "tiny", "inputs": [image] * 3}
    assert httpx.post(f"{a}/embed", json=body, headers=headers, timeout=30).status_code == 200
    over = httpx.post(f"{b}/embed", json=body, headers=headers, timeout=30)
    assert over.status_code == 429 and "needs 3" in over.json()["error"]["message"]
    single = {"model": "tiny", "inputs": [image]}
    assert httpx.post(f"{b}/embed", json=single, headers=headers, timeout=30).status_code == 200
    bursty = make_key(a, "bursty", ["*:read"], requests=2, window_s=1)
    status_until(b, bursty["key"], 200)
    time.sleep(1.0)  # a fresh one-second window
    with Client(b, api_key=bursty["key"]) as client:  # the third call meets 429 and waits out Retry-After
        started = time.monotonic()
        for _ in range(3):
            client.models()
        assert time.monotonic() - started < 3.5


def test_concurrency_slots_are_shared_and_a_crashed_holders_lapse(database, monkeypatch):
    """Two limiters, as two gateway processes hold them, on the same store."""
    monkeypatch.setattr(shared_limits, "SLOT_TTL_S", 0.5)
    monkeypatch.setattr(shared_limits, "SLOT_HOLD_S", 0.0)
    principal = Principal("k-concurrent", limits=KeyLimits(concurrency=2))

    async def scenario(store: PostgresStore) -> None:
        first, second = SharedLimiter(store, Metrics()), SharedLimiter(store, Metrics())
        held = [await first.admit(principal), await first.admit(principal)]
        with pytest.raises(RateLimited, match="2 requests in flight"):
            await second.admit(principal)
        held[0].done()
        await first.maintain()  # gives the idle slot back
        (await second.admit(principal)).done()
        # `first` stops renewing (as a killed process would): its other slot lapses
        await asyncio.sleep(0.6)
        both = [await second.admit(principal), await second.admit(principal)]
        for admission in both:
            admission.done()

    store = PostgresStore(database)
    try:
        asyncio.run(scenario(store))
    finally:
        store.close()
