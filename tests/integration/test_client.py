"""The Python SDK against real servers: the gateway (tiny families and the trained demo family),
a small real uvicorn app that answers 503 or stalls, for the retry and timeout paths, and one
that plays a newer gateway (unknown fields in every answer)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from focalserve_client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    SearchResponse,
    ServerError,
    ServerUnreachableError,
)
from focalserve_client.cli import add_index_command
from focalserve_devtools.launch import free_port, running_gateway
from focalserve_training.data import ColorShapeGenerator
from tests.helpers.images import png, shape_png

ROOT = Path(__file__).resolve().parents[2]
COLOUR = "what colour is the shape?"
SHAPE = "which shape is this?"
RED, BLUE = shape_png((220, 30, 30)), shape_png((30, 30, 220))


class CountingTransport(httpx.HTTPTransport):
    """Counts (and keeps) every request that reaches the network layer, retries included."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await super().handle_async_request(request)


def embed_posts(transport) -> list[int]:
    return [
        len(json.loads(r.content)["inputs"]) for r in transport.requests if r.url.path == "/embed"
    ]


# --- embeddings on the tiny families (gateway_url: max_inputs_per_request=16) ---------------


def test_one_image_under_two_instructions_gives_two_embeddings(gateway_url):
    with Client(gateway_url) as client:
        out = client.embed([RED, RED], [COLOUR, SHAPE], model="tiny")
        again = client.embed(RED, COLOUR, model="tiny")
    assert out.dtype == np.float32 and out.shape == (2, 64)
    assert np.linalg.norm(out, axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-3
    np.testing.assert_allclose(again[0], out[0], atol=1e-6)


def test_paths_arrays_and_pil_images_embed_like_their_bytes(gateway_url, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(RED)
    pixels = np.asarray(Image.open(io.BytesIO(RED)).convert("RGB"))
    with Client(gateway_url) as client:
        out = client.embed(
            [RED, path, str(path), pixels, Image.fromarray(pixels)], COLOUR, model="tiny"
        )
        batch = client.embed(np.stack([pixels, pixels]), COLOUR, model="tiny")
    np.testing.assert_allclose(out, np.repeat(out[:1], 5, axis=0), atol=1e-6)
    np.testing.assert_allclose(batch, out[:2], atol=1e-6)


def test_embed_text_and_plain_clip(gateway_url):
    with Client(gateway_url) as client:
        texts = client.embed_text(["red", "blue", "red"], model="tiny")
        clip = client.embed([RED, BLUE], model="tinyclip")
    assert texts.shape == (3, 64) and texts.dtype == np.float32
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert np.abs(texts[0] - texts[1]).max() > 1e-3 and clip.shape[0] == 2


def test_inputs_beyond_the_server_limit_are_chunked(gateway_url):
    images = [shape_png((6 * i, 250 - 6 * i, 90)) for i in range(40)]
    transport = CountingTransport()
    with Client(gateway_url, transport=transport) as client:
        out = client.embed(images, COLOUR, model="tiny")
        assert client.max_inputs_per_request == 16  # learned from the first refusal
        again = client.embed(images, COLOUR, model="tiny")
        single = client.embed(images[37], COLOUR, model="tiny")
    # 40 refused (413 too_many_inputs) then 16+16+8; the second call chunks right away
    assert embed_posts(transport) == [40, 16, 16, 8, 16, 16, 8, 1]
    assert out.shape == (40, 64)
    np.testing.assert_allclose(out, again, atol=1e-6)
    np.testing.assert_allclose(out[37], single[0], atol=1e-6)


async def test_async_client_sends_chunks_concurrently_in_order(gateway_url):
    images = [shape_png((6 * i, 250 - 6 * i, 90)) for i in range(40)]
    transport = AsyncCountingTransport()
    async with AsyncClient(gateway_url, max_inputs_per_request=16, transport=transport) as client:
        out = await client.embed(images, COLOUR, model="tiny", concurrency=3)
        texts = await client.embed_text(["red", "blue"], model="tiny")
    with Client(gateway_url, max_inputs_per_request=16) as client:
        expected = client.embed(images, COLOUR, model="tiny")
    assert sorted(embed_posts(transport)) == [2, 8, 16, 16]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert texts.shape == (2, 64)


def test_errors_map_onto_the_hierarchy_without_retrying_4xx(gateway_url):
    transport = CountingTransport()
    with Client(gateway_url, transport=transport, max_retries=3) as client:
        with pytest.raises(NotFoundError) as unknown:
            client.embed(RED, COLOUR, model="nope")
        assert unknown.value.status == 404 and unknown.value.code == "unknown_model"
        assert "nope" in unknown.value.message
        assert isinstance(unknown.value.__cause__, httpx.HTTPStatusError)
        assert len(transport.requests) == 1

        with pytest.raises(InvalidRequestError) as bad:
            client.embed([RED] * 20 + [b"not an image"], COLOUR, model="tiny")
        assert bad.value.status == 422 and bad.value.code == "invalid_image"
        assert bad.value.loc == ("inputs", 20, "image")  # in the caller's list, not the chunk
        assert "inputs[" not in bad.value.message  # the position is `loc`'s, not the text's
        with pytest.raises(InvalidRequestError) as clip:
            client.embed(RED, COLOUR, model="tinyclip")
        assert clip.value.code == "invalid_instruction"
    # one request per call, and for the chunked call one per chunk up to the refused one
    assert len(transport.requests) == 1 + 3 + 1  # 21 refused as too many, then 16 and 5


def test_api_key_is_sent_as_a_bearer_token(gateway_url):
    transport = CountingTransport()
    with Client(gateway_url, api_key="s3cret", transport=transport) as client:
        assert client.health().status == "ok" and client.ready().status == "ok"
        assert {m.name for m in client.models()} == {"tiny", "tinyclip"}
    assert {r.headers["authorization"] for r in transport.requests} == {"Bearer s3cret"}


def test_served_openapi_schema_equals_the_committed_file(gateway_url):
    committed = json.loads((ROOT / "openapi.json").read_text())
    served = httpx.get(f"{gateway_url}/openapi.json", timeout=10).json()
    assert served == committed, (
        "the API changed: regenerate openapi.json (client/README.md says how)"
    )


# --- retries and timeouts against a small real server ---------------------------------------


class Flaky:
    """Answers /embed with 503 (+ Retry-After: 0) `failures` times, then with embeddings."""

    def __init__(self) -> None:
        self.failures, self.code, self.calls = 0, "overloaded", 0

    async def embed(self, request: Request) -> JSONResponse:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            return JSONResponse(
                {"error": {"code": self.code, "message": "queue full"}},
                status_code=503,
                headers={"Retry-After": "0"},
            )
        inputs = (await request.json())["inputs"]
        data = [
            {"index": i, "embedding": [1.0, 0.0, 0.0], "instruction": None, "space": "clip:0:none"}
            for i in range(len(inputs))
        ]
        return JSONResponse({"model": "fake", "dim": 3, "data": data})

    async def stall(self, request: Request) -> JSONResponse:
        self.calls += 1
        await asyncio.sleep(3)
        return JSONResponse({"models": []})


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread, on a socket bound here (no port race)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="module")
def flaky():
    state = Flaky()
    app = Starlette(
        routes=[Route("/embed", state.embed, methods=["POST"]), Route("/models", state.stall)]
    )
    with serving(app) as url:
        yield url, state


def test_503_is_retried_until_it_succeeds(flaky):
    url, state = flaky
    state.failures, state.code, state.calls = 2, "overloaded", 0
    with Client(url, max_retries=3, backoff_max=0.05) as client:
        out = client.embed(RED)
    assert state.calls == 3 and out.shape == (1, 3) and out.dtype == np.float32


async def test_async_client_retries_503_too(flaky):
    url, state = flaky
    state.failures, state.code, state.calls = 1, "overloaded", 0
    async with AsyncClient(url, max_retries=1, backoff_max=0.05) as client:
        out = await client.embed([RED, BLUE])
    assert state.calls == 2 and out.shape == (2, 3)


def test_retries_are_bounded_then_overloaded_is_raised(flaky):
    url, state = flaky
    state.failures, state.code, state.calls = 100, "overloaded", 0
    with (
        Client(url, max_retries=2, backoff_max=0.05) as client,
        pytest.raises(OverloadedError) as error,
    ):
        client.embed(RED)
    assert state.calls == 3 and error.value.status == 503 and error.value.code == "overloaded"
    state.failures, state.code, state.calls = 100, "backend_unavailable", 0
    with (
        Client(url, max_retries=1, backoff_max=0.05) as client,
        pytest.raises(ServerError) as error,
    ):
        client.embed(RED)
    assert state.calls == 2 and error.value.code == "backend_unavailable"
    state.failures = 0


def test_a_read_timeout_raises_timeout_error_without_retrying(flaky):
    url, state = flaky
    state.calls = 0
    with (
        Client(url, timeout=0.3, max_retries=3) as client,
        pytest.raises(RequestTimeoutError) as error,
    ):
        client.models()
    assert state.calls == 1 and isinstance(error.value.__cause__, httpx.ReadTimeout)


def test_connection_refused_is_retried_then_raised():
    transport = CountingTransport()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, max_retries=2, backoff_base=0.01, transport=transport) as client:
        with pytest.raises(ServerUnreachableError) as error:
            client.health()
    assert len(transport.requests) == 3 and isinstance(error.value.__cause__, httpx.ConnectError)
    assert error.value.status is None


# --- a newer server: every answer carries fields this SDK does not know ----------------------


class NewerGateway:
    """A small in-memory gateway, a version ahead: unknown fields in every answer, structured
    errors (`loc`, `limit`), and at most `LIMIT` inputs or items per request."""

    LIMIT = 4
    NEW = {"added_in_v2": {"nested": [1, 2]}, "trace_id": "abc"}

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, dict]] = {}
        self.conditions: dict[str, list[str]] = {}
        self.sizes: list[int] = []

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.health),
            Route("/readyz", self.health),
            Route("/models", self.models),
            Route("/embed", self.embed, methods=["POST"]),
            Route("/collections", self.create, methods=["POST"]),
            Route("/collections", self.list),
            Route("/collections/{name}", self.get),
            Route("/collections/{name}", self.delete, methods=["DELETE"]),
            Route("/collections/{name}/items", self.add, methods=["POST"]),
            Route("/collections/{name}/items", self.page),
            Route("/collections/{name}/items/{item_id:path}", self.item),
            Route("/collections/{name}/conditions", self.add_condition, methods=["POST"]),
            Route("/collections/{name}/conditions", self.list_conditions),
            Route("/search", self.search, methods=["POST"]),
        ]

    def answer(self, body: dict | list, status: int = 200) -> JSONResponse:
        return JSONResponse({**body, **self.NEW} if isinstance(body, dict) else body, status_code=status)

    def refuse(self, status: int, code: str, message: str, **where) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message, **where, **self.NEW}}, status_code=status)

    def refused_batch(self, key: str, batch: list[dict]) -> JSONResponse | None:
        self.sizes.append(len(batch))
        if len(batch) > self.LIMIT:
            return self.refuse(413, "too_many_inputs", f"{len(batch)} in one request", limit=self.LIMIT)
        for index, entry in enumerate(batch):
            if base64.b64decode(entry["image"]) == b"bad":
                return self.refuse(422, "invalid_image", "cannot decode the image", loc=[key, index, "image"])
        return None

    async def health(self, request: Request) -> JSONResponse:
        return self.answer({"status": "ok", "detail": {}})

    async def models(self, request: Request) -> JSONResponse:
        model = {
            "name": "next", "family": "clip", "open_clip_model": "ViT-B-32", "embedding_dim": 2,
            "condition_dim": 0, "image_size": 32, "context_length": 8, "checkpoint_hash": "00",
            "requires_instruction": False, **self.NEW,
        }
        return self.answer({"models": [model]})

    async def embed(self, request: Request) -> JSONResponse:
        inputs = (await request.json())["inputs"]
        if refused := self.refused_batch("inputs", inputs):
            return refused
        data = [
            {"index": i, "embedding": [float(base64.b64decode(entry["image"])), 0.0], "instruction": None,
             "space": "next:00:none", **self.NEW}
            for i, entry in enumerate(inputs)
        ]
        return self.answer({"model": "next", "dim": 2, "data": data})

    def info(self, name: str) -> dict:
        return {"name": name, "model": "next", "family": "clip", "dim": 2, "items": len(self.collections[name]),
                "conditions": [self.condition(name, instruction) for instruction in self.conditions[name]], **self.NEW}

    def condition(self, name: str, instruction: str) -> dict:
        total = len(self.collections[name])
        return {"instruction": instruction, "index": "flat", "status": "ready", "embedded": total, "total": total,
                "error": None, **self.NEW}

    async def create(self, request: Request) -> JSONResponse:
        name = (await request.json())["name"]
        self.collections[name], self.conditions[name] = {}, []
        return self.answer(self.info(name), 201)

    async def list(self, request: Request) -> JSONResponse:
        return self.answer({"collections": [self.info(name) for name in self.collections]})

    async def get(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in self.collections:
            return self.refuse(404, "not_found", f"no collection {name!r}")
        return self.answer(self.info(name))

    async def delete(self, request: Request) -> Response:
        del self.collections[request.path_params["name"]]
        return Response(status_code=204)

    async def add(self, request: Request) -> JSONResponse:
        items = (await request.json())["items"]
        if refused := self.refused_batch("items", items):
            return refused
        stored = self.collections[request.path_params["name"]]
        for item in items:
            stored[item["id"]] = {"id": item["id"], "metadata": item["metadata"], "image_sha256": "00", **self.NEW}
        return self.answer({"added": len(items)}, 201)

    async def page(self, request: Request) -> JSONResponse:
        items = list(self.collections[request.path_params["name"]].values())
        after, limit = int(request.query_params.get("after") or 0), int(request.query_params["limit"])
        next_after = str(after + limit) if after + limit < len(items) else None
        return self.answer({"items": items[after : after + limit], "next_after": next_after})

    async def item(self, request: Request) -> JSONResponse:
        return self.answer(self.collections[request.path_params["name"]][request.path_params["item_id"]])

    async def add_condition(self, request: Request) -> JSONResponse:
        name, instruction = request.path_params["name"], (await request.json())["instruction"]
        self.conditions[name].append(instruction)
        return self.answer(self.condition(name, instruction), 202)

    async def list_conditions(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        return self.answer([self.condition(name, instruction) for instruction in self.conditions[name]])

    async def search(self, request: Request) -> JSONResponse:
        body = await request.json()
        items = list(self.collections[body["collection"]].values())[: body["k"]]
        results = [{"id": item["id"], "score": 1.0, "metadata": item["metadata"], **self.NEW} for item in items]
        return self.answer({"collection": body["collection"], "condition": body["condition"], "results": results})


@pytest.fixture()
def newer():
    state = NewerGateway()
    with serving(Starlette(routes=state.routes())) as url:
        yield url, state


def numbered(count: int, bad: int | None = None) -> list[bytes]:
    """Images the newer gateway embeds as [n, 0]; b"bad" it refuses."""
    return [b"bad" if n == bad else str(n).encode() for n in range(count)]


async def drive_newer_gateway(call, state: NewerGateway) -> None:
    """Every SDK method against the newer gateway; `call(method, *args)` awaits either client."""
    assert [m.name for m in await call("models")] == ["next"]
    assert (await call("health")).status == "ok" and (await call("ready")).status == "ok"
    vectors = await call("embed", numbered(10))
    assert vectors[:, 0].tolist() == list(range(10)) and vectors.dtype == np.float32
    assert state.sizes[0] == 10 and sorted(state.sizes[1:]) == [2, 4, 4]  # refused, then at its limit
    with pytest.raises(InvalidRequestError) as bad:
        await call("embed", numbered(10, bad=9))
    assert (bad.value.loc, bad.value.code) == (("inputs", 9, "image"), "invalid_image")

    assert (await call("create_collection", "things")).items == 0
    items = [(f"dir/{n}.png", image, {"n": n}) for n, image in enumerate(numbered(9))]
    assert await call("add_items", "things", items, chunk_size=4, concurrency=2) == 9
    page = await call("list_items", "things", limit=5)
    rest = await call("list_items", "things", after=page.next_after, limit=5)
    # two chunks in flight at once may arrive in either order: the pages hold every item once
    assert sorted(i.id for i in page.items + rest.items) == sorted(item[0] for item in items)
    assert rest.next_after is None
    assert (await call("get_item", "things", "dir/3.png")).metadata == {"n": 3}
    assert (await call("add_condition", "things", "which?")).status == "ready"
    assert (await call("wait_for_condition", "things", "which?", timeout=5)).embedded == 9
    assert [c.instruction for c in await call("list_conditions", "things")] == ["which?"]
    hits = await call("search", "things", "which?", text="red", k=3)
    assert [hit.id for hit in hits.results] == ["dir/0.png", "dir/1.png", "dir/2.png"]
    assert [c.name for c in await call("list_collections")] == ["things"]
    assert (await call("get_collection", "things")).items == 9
    await call("delete_collection", "things")
    with pytest.raises(NotFoundError):
        await call("get_collection", "things")


async def test_client_works_against_a_server_with_unknown_fields(newer):
    url, state = newer
    with Client(url, max_retries=0) as client:

        async def call(name, *args, **kwargs):  # the blocking client, from a worker thread
            return await asyncio.to_thread(getattr(client, name), *args, **kwargs)

        await drive_newer_gateway(call, state)


async def test_async_client_works_against_a_server_with_unknown_fields(newer):
    url, state = newer
    async with AsyncClient(url, max_retries=0) as client:

        async def call(name, *args, **kwargs):
            return await getattr(client, name)(*args, **kwargs)

        await drive_newer_gateway(call, state)


def test_index_add_is_built_on_the_sdk_and_resumes(newer, tmp_path, capsys):
    url, state = newer
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for n, image in enumerate(numbered(7)):
        (folder / ("sub" if n % 2 else "") / f"{n}.png").write_bytes(image)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "meta.jsonl").write_text(json.dumps({"file": "sub/1.png", "kind": "odd"}) + "\n")
    parser = argparse.ArgumentParser()
    add_index_command(parser.add_subparsers())
    args = parser.parse_args(
        ["index", "add", "--collection", "folder", "--images", str(folder), "--url", url,
         "--metadata", str(tmp_path / "meta.jsonl"), "--batch-size", "3"]
    )
    args.handler(args)
    assert json.loads(capsys.readouterr().out) == {"collection": "folder", "added": 7, "skipped": 0}
    assert sorted(state.sizes) == [1, 3, 3]
    assert state.collections["folder"]["sub/1.png"]["metadata"] == {"kind": "odd"}

    del state.collections["folder"]["4.png"]  # as if the first run had been interrupted
    args.handler(args)
    assert json.loads(capsys.readouterr().out) == {"collection": "folder", "added": 1, "skipped": 6}
    assert len(state.collections["folder"]) == 7

    (folder / "bad.png").write_bytes(b"bad")
    with pytest.raises(SystemExit, match=r"cannot decode the image \(422 invalid_image at items\[0\]\.image\)"):
        args.handler(args)


# --- collections and conditional search on the trained demo family -------------------------


SAMPLES = [ColorShapeGenerator(seed=91).sample(index) for index in range(90)]


@pytest.fixture(scope="module")
def demo_url(demo_repository, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("client-data")
    log = tmp_path_factory.mktemp("logs") / "client-gateway.log"
    with running_gateway(
        demo_repository, log, data_dir=str(data_dir), max_inputs_per_request="24"
    ) as url:
        yield url


def precision(response: SearchResponse, key: str, value: str) -> float:
    return float(np.mean([result.metadata[key] == value for result in response.results]))


async def add_rest_async(url: str) -> int:
    items = (
        {
            "id": f"shape-{i}",
            "image": sample.image,
            "metadata": {"colour": sample.colour, "shape": sample.shape},
        }
        for i, sample in enumerate(SAMPLES)
        if i >= 50
    )  # a generator: read lazily
    async with AsyncClient(url) as client:
        return await client.add_items("shapes", items, chunk_size=8, concurrency=3)


def test_collection_conditions_and_search(demo_url):
    transport = CountingTransport()
    with Client(demo_url, transport=transport) as client:
        info = client.create_collection("shapes", model="demo")
        assert (info.name, info.model, info.items) == ("shapes", "demo", 0)
        with pytest.raises(InvalidRequestError) as exists:
            client.create_collection("shapes", model="demo")
        assert exists.value.status == 409

        first = [
            (f"shape-{i}", png(s.image), {"colour": s.colour, "shape": s.shape})
            for i, s in enumerate(SAMPLES[:50])
        ]
        assert client.add_items("shapes", first, chunk_size=32, concurrency=2) == 50
        posts = [
            len(json.loads(r.content)["items"])
            for r in transport.requests
            if r.url.path.endswith("/items")
        ]
        assert sorted(posts) == [
            8,
            18,
            24,
            32,
        ]  # 32 is over the server's limit of 24: split, 24 + 8
        assert asyncio.run(add_rest_async(demo_url)) == 40
        assert client.get_collection("shapes").items == 90

        registered = client.add_condition("shapes", "  What COLOUR is the shape? ")
        assert registered.instruction == COLOUR
        client.add_condition("shapes", SHAPE, index="hnsw")
        for instruction in ("What colour is the shape?", SHAPE):
            ready = client.wait_for_condition("shapes", instruction, timeout=120, poll_interval=0.2)
            assert ready.status == "ready" and ready.embedded == 90
        with pytest.raises(NotFoundError):
            client.wait_for_condition("shapes", "how big is it?", timeout=1)

        query = next(s for s in SAMPLES if s.colour == "red" and s.shape == "circle")
        by_colour = client.search("shapes", COLOUR, image=query.image, k=5)
        by_shape = client.search("shapes", SHAPE, image=np.asarray(query.image), k=5)
        assert isinstance(by_colour, SearchResponse) and by_colour.condition == COLOUR
        assert (
            precision(by_colour, "colour", "red") >= 0.8
            and precision(by_shape, "shape", "circle") >= 0.8
        )
        assert precision(client.search("shapes", COLOUR, text="red", k=5), "colour", "red") >= 0.8
        neighbours = client.search(
            "shapes", COLOUR, item_id="shape-0", k=5, filter={"shape": SAMPLES[0].shape}
        )
        assert "shape-0" not in [r.id for r in neighbours.results]
        assert {r.metadata["shape"] for r in neighbours.results} == {SAMPLES[0].shape}

        assert client.get_item("shapes", "shape-3").metadata == {
            "colour": SAMPLES[3].colour,
            "shape": SAMPLES[3].shape,
        }
        client.delete_item("shapes", "shape-3")
        with pytest.raises(NotFoundError) as gone:
            client.get_item("shapes", "shape-3")
        assert gone.value.code == "not_found"
        assert "shape-3" not in [
            r.id for r in client.search("shapes", COLOUR, image=SAMPLES[3].image, k=10).results
        ]
        with pytest.raises(NotFoundError):
            client.search("shapes", "how big is it?", text="red")

        assert [c.name for c in client.list_collections()] == ["shapes"]
        client.delete_collection("shapes")
        with pytest.raises(NotFoundError):
            client.get_collection("shapes")


def test_every_image_under_several_instructions_in_order_and_within_the_limit(gateway_url):
    images = [RED, BLUE, RED, BLUE, RED, BLUE]
    instructions = [COLOUR, SHAPE, "is it round?"]
    transport = CountingTransport()
    with Client(gateway_url, max_inputs_per_request=16, transport=transport) as client:
        under = client.embed_under(images, instructions, model="tiny")
        singles = [client.embed(images, instruction, model="tiny") for instruction in instructions]
        with pytest.raises(ValueError, match="non-empty sequence"):
            client.embed_under(images, "one string", model="tiny")
    assert under.shape == (6, 3, 64) and under.dtype == np.float32
    assert embed_posts(transport)[:2] == [5, 1]  # 16 embeddings a request: 5 images x 3, then 1 x 3
    for number in range(3):
        np.testing.assert_allclose(under[:, number], singles[number], atol=1e-5)


def test_add_conditions_registers_several_at_once(gateway_url):
    with Client(gateway_url) as client:
        client.create_collection("multi-sdk", model="tiny")
        client.add_items("multi-sdk", [(f"i{n}", image, {}) for n, image in enumerate([RED, BLUE, RED])])
        infos = client.add_conditions("multi-sdk", [COLOUR, SHAPE])
        assert [info.instruction for info in infos] == [COLOUR, SHAPE]
        for instruction in (COLOUR, SHAPE):
            assert client.wait_for_condition("multi-sdk", instruction, timeout=60).status == "ready"
            assert client.search("multi-sdk", instruction, item_id="i0", k=1).results[0].id == "i2"
        with pytest.raises(ValueError, match="non-empty"):
            client.add_conditions("multi-sdk", [])
