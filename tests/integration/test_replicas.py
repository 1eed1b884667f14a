"""Several gateways, one set of collections: three replicas on one real PostgreSQL (and two
processes on one SQLite data dir) behave as one service."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from focalserve_client import Client
from focalserve_client.schemas import SEQ_HEADER
from focalserve_devtools.launch import gateway_process, gateway_processes
from focalserve_training.data import ColorShapeGenerator
from tests.helpers.images import b64

COLOUR = "what colour is the shape?"
SHAPE = "which shape is this?"
SAMPLES = [ColorShapeGenerator(seed=91).sample(index) for index in range(160)]
FAST_LOG = {"log_poll_interval_s": "0.05", "consistency_wait_s": "3"}


def png(index: int) -> str:
    buffer = io.BytesIO()
    SAMPLES[index].image.save(buffer, "PNG")
    return b64(buffer.getvalue())


def item(index: int, prefix: str = "i") -> dict:
    sample = SAMPLES[index]
    return {"id": f"{prefix}{index}", "image": png(index), "metadata": {"colour": sample.colour, "shape": sample.shape}}


def seq(response: httpx.Response) -> int:
    assert response.status_code < 300, response.text
    return int(response.headers[SEQ_HEADER])


def wait_ready(url: str, collection: str, timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conditions = httpx.get(f"{url}/collections/{collection}/conditions", timeout=30).json()
        if conditions and all(c["status"] == "ready" for c in conditions):
            return conditions
        assert all(c["status"] != "failed" for c in conditions), conditions
        time.sleep(0.2)
    raise TimeoutError(f"conditions of {collection} not ready: {conditions}")


def search(url: str, collection: str, condition: str, query: dict, min_seq: int = 0, k: int = 10) -> httpx.Response:
    body = {"collection": collection, "condition": condition, "query": query, "k": k, "min_seq": min_seq}
    return httpx.post(f"{url}/search", json=body, timeout=30)


def ranked(url: str, collection: str, condition: str, query: dict, min_seq: int = 0) -> list[tuple[str, float]]:
    response = search(url, collection, condition, query, min_seq)
    assert response.status_code == 200, response.text
    return [(hit["id"], round(hit["score"], 5)) for hit in response.json()["results"]]


@pytest.fixture(scope="module")
def database(postgres_server) -> Iterator[str]:
    yield postgres_server.create_database("replicas")


@pytest.fixture(scope="module")
def replicas(model_repository: Path, database: str, tmp_path_factory) -> Iterator[list[str]]:
    """Three gateways, each with its own data dir, on one database."""
    work = tmp_path_factory.mktemp("replicas")
    configs = [(work / f"{n}.log", {"data_dir": str(work / n), "database_url": database, **FAST_LOG}) for n in "abc"]
    with gateway_processes(model_repository, configs) as started:
        yield [url for url, _ in started]


def test_a_collection_built_through_three_replicas_answers_identically_on_each(replicas):
    a, b, c = replicas
    assert httpx.post(f"{a}/collections", json={"name": "shared", "model": "tiny"}).status_code == 201
    added = httpx.post(f"{b}/collections/shared/items", json={"items": [item(i) for i in range(40)]}, timeout=120)
    registered = httpx.post(f"{c}/collections/shared/conditions", json={"instruction": COLOUR}, timeout=30)
    assert registered.status_code == 202 and seq(registered) > seq(added)
    for url in replicas:
        conditions = wait_ready(url, "shared")
        assert conditions[0]["embedded"] == conditions[0]["total"] == 40
    last = seq(httpx.post(f"{a}/collections/shared/items", json={"items": [item(40)]}, timeout=60))
    for query in ({"item_id": "i3"}, {"text": "red"}, {"image": png(41)}):
        results = [ranked(url, "shared", COLOUR, query, min_seq=last) for url in replicas]
        assert results[0] == results[1] == results[2] and len(results[0]) == 10


def test_read_your_writes_across_replicas(replicas):
    a, b, _ = replicas
    httpx.post(f"{a}/collections", json={"name": "ryw", "model": "tiny"})
    httpx.post(f"{a}/collections/ryw/conditions", json={"instruction": SHAPE})
    wait_ready(a, "ryw")
    for index in range(50, 56):  # each write on one replica, read at once on another with its position
        position = seq(httpx.post(f"{a}/collections/ryw/items", json={"items": [item(index)]}, timeout=60))
        ids = [hit for hit, _ in ranked(b, "ryw", SHAPE, {"image": png(index)}, min_seq=position)]
        assert f"i{index}" in ids


class RoundRobin(httpx.BaseTransport):
    """A load balancer in a transport: each request goes to the next replica."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = [httpx.URL(url) for url in urls]
        self._next = 0
        self._http = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = self._urls[self._next % len(self._urls)]
        self._next += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return self._http.handle_request(request)


def test_the_sdk_reads_its_own_writes_behind_a_load_balancer(replicas):
    with Client("http://gateways", transport=RoundRobin(replicas)) as client:
        client.create_collection("balanced", model="tiny")
        client.add_condition("balanced", COLOUR)
        client.wait_for_condition("balanced", COLOUR, timeout=120)
        for index in range(60, 66):  # the add lands on one replica, the search on the next
            client.add_items("balanced", [(f"i{index}", SAMPLES[index].image, {})])
            assert client.last_seq > 0
            hits = client.search("balanced", COLOUR, image=SAMPLES[index].image, k=10).results
            assert f"i{index}" in [hit.id for hit in hits]


def test_a_position_no_write_has_reached_is_a_client_error(replicas):
    response = search(replicas[0], "ryw", SHAPE, {"text": "x"}, min_seq=10**12)
    assert response.status_code == 422 and response.json()["error"]["loc"] == ["min_seq"]


def test_concurrent_adds_through_every_replica_lose_nothing(replicas):
    a = replicas[0]
    httpx.post(f"{a}/collections", json={"name": "busy", "model": "tiny"})
    httpx.post(f"{a}/collections/busy/conditions", json={"instruction": COLOUR})
    wait_ready(a, "busy")
    positions: list[int] = []

    def add_through(url: str, offset: int) -> None:
        for start in range(offset, offset + 30, 5):
            response = httpx.post(f"{url}/collections/busy/items",
                                  json={"items": [item(i) for i in range(start, start + 5)]}, timeout=120)
            positions.append(seq(response))

    threads = [threading.Thread(target=add_through, args=(url, 30 * n)) for n, url in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    newest = max(positions)
    for url in replicas:
        assert httpx.get(f"{url}/collections/busy", timeout=30).json()["items"] == 90
        for index in (0, 29, 30, 59, 60, 89):
            assert ranked(url, "busy", COLOUR, {"item_id": f"i{index}"}, min_seq=newest)


def test_a_delete_on_one_replica_leaves_every_replicas_results(replicas):
    a, b, c = replicas
    before = ranked(c, "shared", COLOUR, {"image": png(5)})
    assert "i5" in [hit for hit, _ in before]
    deleted = httpx.delete(f"{a}/collections/shared/items/i5", timeout=30)
    assert deleted.status_code == 204
    for url in (b, c):
        assert "i5" not in [hit for hit, _ in ranked(url, "shared", COLOUR, {"image": png(5)}, min_seq=seq(deleted))]


def test_replicas_killed_during_adds_and_during_a_shared_build_lose_nothing(
    model_repository: Path, postgres_server, tmp_path: Path
):
    database = postgres_server.create_database("kill9")
    settings = {"database_url": database, "build_chunk_size": "4", "build_lease_s": "2", **FAST_LOG}
    configs = [(tmp_path / f"{n}.log", {"data_dir": str(tmp_path / n), **settings}) for n in "abc"]
    with gateway_processes(model_repository, configs) as [(a, killed_adding), (b, killed_building), (c, _)]:
        httpx.post(f"{c}/collections", json={"name": "k", "model": "tiny"})
        acknowledged: list[str] = []

        def add_until_killed() -> None:
            for start in range(0, 160, 4):
                try:
                    response = httpx.post(f"{a}/collections/k/items",
                                          json={"items": [item(i) for i in range(start, start + 4)]}, timeout=60)
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    acknowledged.extend(f"i{i}" for i in range(start, start + 4))

        adder = threading.Thread(target=add_until_killed)
        adder.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_adding.kill()  # kill -9 in the middle of adds
        adder.join(timeout=60)
        assert acknowledged
        head = seq(httpx.post(f"{b}/collections/k/conditions", json={"instruction": COLOUR}, timeout=30))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill the second once the shared build is under way
            if httpx.get(f"{c}/collections/k/conditions", timeout=30).json()[0]["embedded"] >= 8:
                break
            time.sleep(0.02)
        killed_building.kill()
        conditions = wait_ready(c, "k", timeout_s=180)
        assert conditions[0]["embedded"] == conditions[0]["total"] >= len(acknowledged)
        present = httpx.get(f"{c}/collections/k/items", params={"limit": 1000}, timeout=30).json()["items"]
        assert set(acknowledged) <= {entry["id"] for entry in present}
        for item_id in acknowledged[:: max(1, len(acknowledged) // 8)]:
            assert ranked(c, "k", COLOUR, {"item_id": item_id}, min_seq=head)


def test_a_restarted_replica_catches_up_from_its_snapshot_and_the_log(model_repository: Path, postgres_server,
                                                                      tmp_path: Path):
    database = postgres_server.create_database("restart")
    settings = {"database_url": database, **FAST_LOG}
    with gateway_process(model_repository, tmp_path / "a.log", data_dir=str(tmp_path / "a"), **settings) as (a, _):
        with gateway_process(model_repository, tmp_path / "b.log", data_dir=str(tmp_path / "b"), **settings) as (b, _):
            httpx.post(f"{b}/collections", json={"name": "r", "model": "tiny"})
            httpx.post(f"{b}/collections/r/items", json={"items": [item(i) for i in range(30)]}, timeout=120)
            httpx.post(f"{b}/collections/r/conditions", json={"instruction": COLOUR})
            wait_ready(b, "r")
        assert list((tmp_path / "b" / "indexes").glob("*.index"))  # written at shutdown, with its position
        last = seq(httpx.post(f"{a}/collections/r/items", json={"items": [item(i) for i in range(30, 45)]},
                              timeout=120))
        expected = ranked(a, "r", COLOUR, {"image": png(40)}, min_seq=last)
        with gateway_process(model_repository, tmp_path / "b.log", data_dir=str(tmp_path / "b"), **settings) as (b, _):
            assert httpx.get(f"{b}/readyz").status_code == 200  # ready only once caught up
            assert ranked(b, "r", COLOUR, {"image": png(40)}) == expected


def test_two_processes_on_one_sqlite_data_dir_stay_consistent(model_repository: Path, tmp_path: Path):
    data = str(tmp_path / "data")
    configs = [(tmp_path / f"{n}.log", {"data_dir": data, **FAST_LOG}) for n in "ab"]
    with gateway_processes(model_repository, configs) as [(a, _), (b, _)]:
        httpx.post(f"{a}/collections", json={"name": "local", "model": "tiny"})
        httpx.post(f"{b}/collections/local/items", json={"items": [item(i) for i in range(20)]}, timeout=120)
        registered = httpx.post(f"{a}/collections/local/conditions", json={"instruction": COLOUR})
        wait_ready(b, "local")
        last = seq(httpx.post(f"{b}/collections/local/items", json={"items": [item(20)]}, timeout=60))
        assert seq(registered) < last
        assert ranked(a, "local", COLOUR, {"image": png(20)}, min_seq=last) == ranked(
            b, "local", COLOUR, {"image": png(20)}, min_seq=last)


def test_a_gateway_that_is_not_ready_in_time_is_reported_and_stopped(tmp_path, model_repository):
    with pytest.raises(TimeoutError, match="not ready after 0.01 s"):
        with gateway_processes(model_repository, [(tmp_path / "gw.log", {"data_dir": str(tmp_path)})],
                               ready_timeout_s=0.01):
            pass
