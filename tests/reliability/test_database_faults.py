"""PostgreSQL failing under running gateways, for real: stopped with `pg_ctl stop -m immediate`
and started again, killed in the middle of a condition build that two gateways share, and a
connection lost while COMMIT is in flight. Clients get 503 + Retry-After with a code that says
what happened, never another 5xx; the gateways recover by themselves; nothing acknowledged is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from focalserve_client.schemas import SEQ_HEADER
from focalserve_devtools.postgres import LocalPostgres
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import gateway_settings, serving_in_thread
from tests.helpers.loop import wait_for
from tests.helpers.proxy import DatabaseProxy

CONDITION = "what colour is it?"
QUICK = {"log_poll_interval_s": 0.05, "consistency_wait_s": 3, "database_timeout_s": 1, "build_lease_s": 2,
         "build_chunk_size": 8}
UNAVAILABLE = {"database_unavailable", "write_outcome_unknown"}


def item(index: int) -> dict[str, Any]:
    colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    return {"id": f"i{index}", "image": b64(shape_png(colour, size=40, box=4 + index % 8)), "metadata": {"n": index}}


def add(http: httpx.Client, indexes: range | list[int]) -> httpx.Response:
    return http.post("/collections/c/items", json={"items": [item(i) for i in indexes]})


def stored_ids(http: httpx.Client) -> set[str]:
    page = http.get("/collections/c/items", params={"limit": 1000})
    assert page.status_code == 200, page.text
    return {entry["id"] for entry in page.json()["items"]}


def assert_unavailable(response: httpx.Response, codes: set[str] = UNAVAILABLE) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] and response.json()["error"]["code"] in codes


@pytest.fixture
def database() -> Iterator[LocalPostgres]:
    """A server of this test's own: stopping it must not disturb the session's."""
    with LocalPostgres() as server:
        yield server


def test_a_database_restart_gets_503s_and_the_gateway_recovers_without_a_restart(
    model_repository: Path, tmp_path: Path, database: LocalPostgres
):
    settings = gateway_settings(model_repository, tmp_path / "data", database_url=database.create_database("r"),
                                **QUICK)
    with serving_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        http.post("/collections", json={"name": "c", "model": "tiny"})
        http.post("/collections/c/conditions", json={"instruction": CONDITION})
        assert add(http, range(6)).status_code == 201

        database.stop("immediate")  # a crash: no checkpoint, WAL replay on the next start
        assert_unavailable(add(http, [6]))
        search = {"collection": "c", "condition": CONDITION, "query": {"item_id": "i0"}, "k": 3}
        assert_unavailable(http.post("/search", json=search), {"database_unavailable"})
        assert_unavailable(http.get("/collections/c"), {"database_unavailable"})
        ready = http.get("/readyz")
        assert ready.status_code == 200 and "failing since" in ready.json()["detail"]["database"]
        assert 'focalserve_store_failing{part="database"} 1.0' in http.get("/metrics").text

        database.start()  # same data, same port
        wait_for(lambda: add(http, [6]).status_code == 201, 30, "an add succeeding again")
        assert "database" not in http.get("/readyz").json()["detail"]
        assert stored_ids(http) == {f"i{i}" for i in range(7)}  # nothing acknowledged was lost
        last = add(http, [7])
        assert last.status_code == 201
        found = http.post("/search", json={**search, "query": {"item_id": "i7"}, "k": 7,
                                           "min_seq": int(last.headers[SEQ_HEADER])})
        assert found.status_code == 200 and len(found.json()["results"]) == 7  # the follower caught up


def test_a_database_killed_during_a_shared_build_lets_the_build_finish(
    model_repository: Path, tmp_path: Path, database: LocalPostgres
):
    url_of_database = database.create_database("b")
    configs = [gateway_settings(model_repository, tmp_path / name, database_url=url_of_database, **QUICK)
               for name in "ab"]
    total = 240
    with serving_in_thread(configs[0]) as a, serving_in_thread(configs[1]) as b, \
            httpx.Client(base_url=a, timeout=120) as http_a, httpx.Client(base_url=b, timeout=120) as http_b:
        http_a.post("/collections", json={"name": "c", "model": "tiny"})
        for start in range(0, total, 60):
            assert add(http_a, range(start, start + 60)).status_code == 201
        http_a.post("/collections/c/conditions", json={"instruction": CONDITION})
        wait_for(lambda: http_b.get("/collections/c/conditions").json()[0]["embedded"] > 0, 30, "the build starting")
        building = http_b.get("/collections/c/conditions").json()[0]
        assert building["status"] == "building" and building["embedded"] < total, building

        database.stop("immediate")
        time.sleep(1)  # both builders meet the dead database mid-chunk
        database.start()

        def built() -> bool:
            answers = [http.get("/collections/c/conditions") for http in (http_a, http_b)]
            return all(r.status_code == 200 and r.json()[0]["status"] == "ready" for r in answers)

        wait_for(built, 60, "the build finishing on both gateways")
        for http in (http_a, http_b):
            condition = http.get("/collections/c/conditions").json()[0]
            assert condition["embedded"] == condition["total"] == total
            search = {"collection": "c", "condition": CONDITION, "query": {"item_id": "i0"}, "k": total}
            wait_for(lambda http=http, search=search: len(http.post("/search", json=search).json()["results"])
                  == total - 1, 10, "every vector in the index")


def test_a_connection_lost_during_commit_says_the_outcome_is_unknown_and_a_retry_is_safe(
    model_repository: Path, tmp_path: Path, database: LocalPostgres
):
    url_of_database = database.create_database("u")
    with DatabaseProxy(database.port) as proxy:
        through_proxy = url_of_database.replace(f":{database.port}/", f":{proxy.port}/")
        settings = gateway_settings(model_repository, tmp_path / "data", database_url=through_proxy, **QUICK)
        with serving_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            http.post("/collections", json={"name": "c", "model": "tiny"})
            http.post("/collections/c/conditions", json={"instruction": CONDITION})
            wait_for(lambda: http.get("/collections/c/conditions").json()[0]["status"] == "ready", 10, "ready")
            proxy.cut_after_next_commit()
            lost = add(http, [0, 1])
            assert proxy.cuts == 1
            assert_unavailable(lost, {"write_outcome_unknown"})
            assert "may or may not" in lost.json()["error"]["message"]
            assert add(http, [0, 1]).status_code == 201  # adds are idempotent by item id
            assert stored_ids(http) == {"i0", "i1"}
            page = http.get("/collections/c", timeout=10).json()
            assert page["items"] == 2 and page["conditions"][0]["embedded"] == 2


def test_a_hung_database_answers_503_within_the_statement_timeout_and_the_gateway_recovers(
    model_repository: Path, tmp_path: Path, database: LocalPostgres
):
    """A partition, not a crash: the proxy holds every packet and closes nothing. Each call is cut off
    at `database_statement_timeout_s` (1 s here); once packets flow again the same gateway serves."""
    url_of_database = database.create_database("hung")
    with DatabaseProxy(database.port) as proxy:
        through_proxy = url_of_database.replace(f":{database.port}/", f":{proxy.port}/")
        settings = gateway_settings(model_repository, tmp_path / "data", database_url=through_proxy,
                                    database_statement_timeout_s=1, **QUICK)
        with serving_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            http.post("/collections", json={"name": "c", "model": "tiny"})
            http.post("/collections/c/conditions", json={"instruction": CONDITION})
            assert add(http, [0, 1]).status_code == 201
            search = {"collection": "c", "condition": CONDITION, "query": {"text": "red"}, "k": 2}
            proxy.hold()
            try:
                for send in (lambda: http.post("/search", json=search), lambda: add(http, [2]),
                             lambda: http.get("/collections/c")):
                    started = time.monotonic()
                    answer = send()
                    assert_unavailable(answer)
                    assert time.monotonic() - started < 1 + 1, "past the statement timeout plus one second"
            finally:
                proxy.release()
            wait_for(lambda: http.post("/search", json=search).status_code == 200, 10, "searches again")
            for _ in range(20):  # more calls than the pool has connections: none is stuck
                assert http.post("/search", json=search, timeout=5).status_code == 200
            assert add(http, [2]).status_code == 201 and stored_ids(http) == {"i0", "i1", "i2"}
