"""The change log stays bounded under running gateways on one real PostgreSQL: it is compacted below
every gateway heard from within `log_retention_s`, and a gateway that comes back after the log
went past its snapshots rebuilds from the store, says so, and answers as the others do."""

from __future__ import annotations

import httpx
import psycopg

from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import gateway_settings, serving_in_thread
from tests.helpers.loop import wait_for

COLOUR = "what colour is it?"
FAST = {"log_poll_interval_s": 0.05, "log_retention_s": 1.0, "consistency_wait_s": 3}


def add(url: str, first: int, count: int) -> int:
    items = [{"id": f"i{n}", "image": b64(shape_png(((n * 37) % 256, (n * 91) % 256, 60), size=32))}
             for n in range(first, first + count)]
    added = httpx.post(f"{url}/collections/c/items", json={"items": items}, timeout=60)
    assert added.status_code == 201, added.text
    return int(added.headers["FocalServe-Seq"])


def log_rows(database: str) -> int:
    with psycopg.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM changes").fetchone()[0])


def found(url: str, seq: int) -> set[str]:
    body = {"collection": "c", "condition": COLOUR, "query": {"text": "red"}, "k": 100, "min_seq": seq}
    answer = httpx.post(f"{url}/search", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return {hit["id"] for hit in answer.json()["results"]}


def test_a_gateway_stopped_past_the_retention_rebuilds_from_the_store_and_the_log_stays_bounded(
    model_repository, postgres_url, tmp_path
):
    settings = {name: gateway_settings(model_repository, tmp_path / name, database_url=postgres_url, **FAST)
                for name in ("a", "b")}
    with serving_in_thread(settings["a"]) as a:
        assert httpx.post(f"{a}/collections", json={"name": "c", "model": "tiny"}).status_code == 201
        httpx.post(f"{a}/collections/c/conditions", json={"instruction": COLOUR})
        with serving_in_thread(settings["b"]) as b:
            seq = add(b, 0, 8)
            assert len(found(b, seq)) == 8  # b saves its snapshots as it stops
        for batch in range(6):  # while b is away, past its retention: 30 more writes, one change each
            seq = add(a, 8 + 5 * batch, 5)
        wait_for(lambda: log_rows(postgres_url) < 10, 10, "the log compacted below a, past the stopped b")
        with serving_in_thread(settings["b"]) as b:
            assert found(b, seq) == found(a, seq) and len(found(b, seq)) == 38
            detail = httpx.get(f"{b}/readyz").json()
            assert "below the compacted change log" in detail["detail"]["log"], detail
