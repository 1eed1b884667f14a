"""`focalserve serve --workers 2`: two fronts on one port before one engine process, as real processes.

The API answers as one process does (embeddings, errors, collections with read-your-writes);
`/metrics` is one view whichever front answers; a front or the engine killed with SIGKILL is
restarted, fronts answer 503 with Retry-After and `/readyz` says why while the engine is away;
SIGTERM drains every process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc

from focalserve_devtools.launch import gateway_process, running_gateway
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.helpers.loop import wait_for

IMAGE = b64(shape_png())
COLOUR = "what colour is the shape?"


class Workers:
    """A running `--workers 2` gateway: its URL, supervisor and the pid files of its processes."""

    def __init__(self, url: str, supervisor: object, runtime: Path) -> None:
        self.url, self.supervisor, self.runtime = url, supervisor, runtime

    def pid(self, role: str) -> int:
        return int((self.runtime / f"{role}.pid").read_text())

    def fresh(self) -> httpx.Client:
        """A client that opens a new connection per request, so requests spread over the fronts."""
        return httpx.Client(base_url=self.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture
def start_workers(model_repository: Path, tmp_path: Path):
    def start(name: str, **settings: str):
        runtime = tmp_path / f"{name}-run"
        return gateway_process(model_repository, tmp_path / f"{name}.log", workers="2", runtime_dir=str(runtime),
                               data_dir=str(tmp_path / f"{name}-data"), **settings), runtime

    return start


@pytest.fixture(scope="module")
def workers(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    root = tmp_path_factory.mktemp("workers")
    with gateway_process(model_repository, root / "gateway.log", workers="2", runtime_dir=str(root / "run"),
                         data_dir=str(root / "data")) as (url, process):
        yield Workers(url, process, root / "run")


def embed_body(instruction: str = COLOUR) -> dict:
    return {"model": "tiny", "inputs": [{"image": IMAGE, "instruction": instruction}, {"text": "a red circle"}]}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_every_front_answers_what_one_process_answers(workers: Workers, model_repository: Path, tmp_path: Path):
    with InProcessGateway(gateway_settings(model_repository, tmp_path / "data")) as single:
        expected = [entry["embedding"] for entry in single.post("/embed", json=embed_body()).json()["data"]]
        openapi = single.get("/openapi.json").json()
    with workers.fresh() as client:
        for _ in range(6):  # new connections: both fronts answer some
            answer = client.post("/embed", json=embed_body())
            assert answer.status_code == 200
            np.testing.assert_allclose([entry["embedding"] for entry in answer.json()["data"]], expected, atol=1e-5)
        assert client.get("/openapi.json").json() == openapi
        assert client.get("/models").json()["models"][0]["name"] == "tiny"
        openai = client.post("/v1/embeddings", json={"model": "tiny", "input": ["a red circle"]})
        np.testing.assert_allclose(openai.json()["data"][0]["embedding"], expected[1], atol=1e-5)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "tiny", "inputs": [{"image": b64(b"not an image"), "instruction": COLOUR}]}, 422, "invalid_image"),
    ({"model": "nope", "inputs": [{"text": "x"}]}, 404, "unknown_model"),
    ({"model": "tiny", "inputs": [{"text": "x"}] * 300}, 413, "too_many_inputs"),
    ({"model": "tiny", "inputs": [{"image": IMAGE}]}, 422, "invalid_instruction"),
])
def test_bad_input_gets_the_same_errors_from_a_front(workers: Workers, body: dict, status: int, code: str):
    answer = httpx.post(f"{workers.url}/embed", json=body, timeout=60)
    assert answer.status_code == status and answer.json()["error"]["code"] == code


def test_collections_keep_read_your_writes_across_fronts(workers: Workers):
    with workers.fresh() as client:
        assert client.post("/collections", json={"name": "shared", "model": "tiny"}).status_code == 201
        assert client.post("/collections/shared/conditions", json={"instruction": COLOUR}).status_code < 300
        for n in range(5):
            added = client.post("/collections/shared/items", json={"items": [{"id": f"i{n}", "image": IMAGE}]})
            assert added.status_code == 201
            seq = added.headers["FocalServe-Seq"]
            found = client.post("/search", json={"collection": "shared", "condition": COLOUR, "min_seq": int(seq),
                                                 "query": {"image": IMAGE}, "k": 10})
            assert found.status_code == 200, found.text
            assert f"i{n}" in {hit["id"] for hit in found.json()["results"]}
        missing = client.get("/collections/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_metrics_are_one_view_over_every_process(workers: Workers):
    def embeds_counted(client: httpx.Client) -> float:
        text = client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('focalserve_request_duration_seconds_count{method="POST",route="/embed"'))

    with workers.fresh() as client:
        before = embeds_counted(client)
        for _ in range(8):
            assert client.post("/embed", json=embed_body()).status_code == 200
        views = {embeds_counted(client) for _ in range(6)}  # scraped from either front
        assert views == {before + 8}
        text = client.get("/metrics").text
        assert 'focalserve_batch_size_count{model="tiny_image"}' in text  # the engine's batchers, seen by a front


def test_a_killed_front_is_restarted_and_the_port_keeps_answering(workers: Workers):
    victim = workers.pid("front-0")
    os.kill(victim, signal.SIGKILL)
    with workers.fresh() as client:
        for _ in range(10):  # the other front takes the connections meanwhile
            assert client.post("/embed", json=embed_body()).status_code == 200
    wait_for(lambda: workers.pid("front-0") != victim and alive(workers.pid("front-0")), 60, "front restarted")
    wait_for(lambda: httpx.get(f"{workers.url}/readyz").status_code == 200, 60, "ready again")


def test_a_killed_engine_means_503_until_it_is_back(start_workers):
    gateway, runtime = start_workers("engine-kill")
    with gateway as (url, _):
        client = httpx.Client(base_url=url, timeout=60)
        assert client.post("/collections", json={"name": "kept", "model": "tiny"}).status_code == 201
        assert client.post("/collections/kept/items", json={"items": [{"id": "a", "image": IMAGE}]}).status_code == 201
        engine = int((runtime / "engine.pid").read_text())
        os.kill(engine, signal.SIGKILL)
        wait_for(lambda: not alive(engine), 10, "the engine gone")  # reaped by the supervisor: its sockets closed
        away = client.post("/embed", json=embed_body())
        assert away.status_code == 503 and away.headers["Retry-After"]
        assert away.json()["error"]["code"] == "backend_unavailable"
        listed = client.get("/collections")
        assert listed.status_code == 503 and listed.headers["Retry-After"]
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and "engine" in readiness.json()["detail"]
        wait_for(lambda: client.get("/readyz").status_code == 200, 90, "engine restarted")  # this front reaches it
        assert int((runtime / "engine.pid").read_text()) != engine
        assert client.post("/embed", json=embed_body()).status_code == 200
        assert client.get("/collections/kept/items/a").status_code == 200  # the store outlived the engine


def test_sigterm_drains_every_process(start_workers):
    gateway, runtime = start_workers("drain")
    with gateway as (url, supervisor):
        pids = [int((runtime / f"{role}.pid").read_text()) for role in ("engine", "front-0", "front-1")]

        async def embed_then_sigterm() -> list[httpx.Response | BaseException]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                requests = [asyncio.ensure_future(client.post("/embed", json=embed_body(f"question {n}")))
                            for n in range(24)]
                await asyncio.sleep(0.05)
                supervisor.send_signal(signal.SIGTERM)
                return await asyncio.gather(*requests, return_exceptions=True)

        results = asyncio.run(embed_then_sigterm())
        assert supervisor.wait(timeout=90) == 0
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and all(r.status_code == 200 for r in answered)  # what was accepted completed
    assert all(isinstance(r, httpx.TransportError) for r in results if not isinstance(r, httpx.Response))
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_workers_share_postgresql_collections_with_another_gateway(start_workers, model_repository: Path,
                                                                   postgres_url: str, tmp_path: Path):
    """Fronts before an engine on PostgreSQL, beside a one-process gateway on the same database: a write
    through either is read through the other with `min_seq`, as between any two replicas; a key the
    other gateway makes and revokes is honoured and then refused by the fronts' own `/embed`."""
    shared = {"database_url": postgres_url, "log_poll_interval_s": "0.05", "admin_key": "workers-admin"}
    gateway, _ = start_workers("postgres", **shared)
    with gateway as (url, _), running_gateway(model_repository, tmp_path / "single.log", data_dir=str(tmp_path / "s"),
                                              **shared) as single:
        admin = {"Authorization": "Bearer workers-admin"}
        fronts, other = (httpx.Client(base_url=base, timeout=60, headers=admin) for base in (url, single))
        assert fronts.post("/collections", json={"name": "pg", "model": "tiny"}).status_code == 201
        assert fronts.post("/collections/pg/conditions", json={"instruction": COLOUR}).status_code < 300
        for writer, reader in ((fronts, other), (other, fronts)):
            item = f"from-{writer is fronts}"
            added = writer.post("/collections/pg/items", json={"items": [{"id": item, "image": IMAGE}]})
            assert added.status_code == 201
            found = reader.post("/search", json={"collection": "pg", "condition": COLOUR, "k": 10,
                                                 "min_seq": int(added.headers["FocalServe-Seq"]),
                                                 "query": {"image": IMAGE}})
            assert found.status_code == 200 and item in {hit["id"] for hit in found.json()["results"]}
        made = other.post("/admin/keys", json={"name": "team", "grants": [{"collections": "pg", "action": "read"}]})
        team = {"Authorization": f"Bearer {made.json()['key']}"}
        embed = {"model": "tiny", "inputs": [{"text": "a key made elsewhere"}]}
        wait_for(lambda: httpx.post(f"{url}/embed", json=embed, headers=team).status_code == 200, 5, "the new key")
        assert other.delete(f"/admin/keys/{made.json()['id']}").status_code == 204
        wait_for(lambda: httpx.post(f"{url}/embed", json=embed, headers=team).status_code == 401, 5, "the revocation")


def test_on_triton_each_front_calls_triton_with_pixels_in_shared_memory(start_workers, triton, workers: Workers):
    """Triton is the engine: fronts send it uint8 pixels through regions they registered with it."""
    expected = [entry["embedding"] for entry in httpx.post(f"{workers.url}/embed", json=embed_body(),
                                                            timeout=60).json()["data"]]
    gateway, _ = start_workers("triton", backend="triton", triton_url=triton.grpc_url, triton_shared_memory="true")
    with gateway as (url, _), httpx.Client(base_url=url, timeout=60,
                                           limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(4):  # new connections: both fronts answer some
            answer = client.post("/embed", json=embed_body())
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose([entry["embedding"] for entry in answer.json()["data"]], expected, atol=1e-5)
        regions = tritonclient.grpc.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(
            as_json=True).get("regions", {})
        mine = [name for name in regions if name.startswith("focalserve-pixels-")]
        assert len(mine) >= 3  # one per process: each front's, and the engine's for collection adds
