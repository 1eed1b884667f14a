"""The SDK's logic without a server: chunks refused as too large are split (learning the limit),
errors point into the caller's list, and `Client` is `AsyncClient` run on a private loop."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from focalserve_client import AsyncClient, Client, InvalidRequestError, ServerError
from focalserve_client.schemas import ItemPage


class Batches:
    """/embed and /collections/{name}/items over an input limit, with structured errors.

    An input's image is b"<n>" (its position in the caller's list) or b"bad"; an embedding is
    [n, 0]. `byte_limit` refuses a request body over that many bytes, as payload_too_large.
    """

    def __init__(self, limit: int = 5, byte_limit: int | None = None) -> None:
        self.limit, self.byte_limit, self.sizes = limit, byte_limit, []
        self.pages: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return self.page(request)
        key = "inputs" if request.url.path == "/embed" else "items"
        batch = json.loads(request.content)[key]
        self.sizes.append(len(batch))
        if self.byte_limit is not None and len(request.content) > self.byte_limit:
            return error(413, "payload_too_large", "the body is too large", limit=self.byte_limit)
        if len(batch) > self.limit:
            return error(413, "too_many_inputs", f"{len(batch)} in one request", limit=self.limit)
        images = [base64.b64decode(entry["image"]) for entry in batch]
        if b"bad" in images:
            return error(422, "invalid_image", "not an image", loc=[key, images.index(b"bad"), "image"])
        if key == "items":
            return httpx.Response(201, json={"added": len(batch), "replaced": 0})
        data = [
            {"index": i, "embedding": [float(image), 0.0], "instruction": None, "space": "s", "norm": 1}
            for i, image in reversed(list(enumerate(images)))
        ]
        return httpx.Response(200, json={"model": "m", "dim": 2, "data": data, "usage": {}})

    def page(self, request: httpx.Request) -> httpx.Response:
        self.pages.append(dict(request.url.params))
        ids = [f"id-{n}" for n in range(5)]
        after = int(request.url.params.get("after", "0"))
        limit = int(request.url.params["limit"])
        items = [{"id": i, "metadata": {}, "image_sha256": "00"} for i in ids[after : after + limit]]
        next_after = str(after + limit) if after + limit < len(ids) else None
        return httpx.Response(200, json={"items": items, "next_after": next_after, "total": 5})


def error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


def images(count: int, bad: int | None = None) -> list[bytes]:
    return [b"bad" if n == bad else str(n).encode() for n in range(count)]


class Driver:
    """One API call through either face of the SDK, so each test covers both."""

    def __init__(self, kind: str, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.kind, self.transport = kind, httpx.MockTransport(handler)

    @contextmanager
    def open(self, **options: Any) -> Iterator[Callable[..., Any]]:
        if self.kind == "Client":
            with Client("http://fake", max_retries=0, transport=self.transport, **options) as client:
                self.client: Client | AsyncClient = client
                yield lambda name, *args, **kwargs: getattr(client, name)(*args, **kwargs)
            return
        loop = asyncio.new_event_loop()
        client = self.client = AsyncClient("http://fake", max_retries=0, transport=self.transport, **options)
        try:
            yield lambda name, *args, **kwargs: loop.run_until_complete(getattr(client, name)(*args, **kwargs))
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()


@pytest.fixture(params=["Client", "AsyncClient"])
def kind(request) -> str:
    return request.param


def test_a_refused_chunk_is_split_at_the_reported_limit_which_is_kept(kind):
    server = Batches(limit=5)
    driver = Driver(kind, server)
    with driver.open() as call:
        out = call("embed", images(12))
        assert driver.client.max_inputs_per_request == 5
        again = call("embed", images(12))
    assert out.dtype == np.float32 and out[:, 0].tolist() == list(range(12))
    np.testing.assert_array_equal(out, again)
    assert server.sizes[:4] == [12, 5, 5, 2] and sorted(server.sizes[4:]) == [2, 5, 5]


def test_items_are_split_the_same_way(kind):
    server = Batches(limit=3)
    with Driver(kind, server).open() as call:
        items = ((f"id-{n}", image, {"n": n}) for n, image in enumerate(images(8)))
        assert call("add_items", "shapes", items, chunk_size=4, concurrency=2) == 8
    assert sorted(server.sizes) == [1, 1, 3, 3, 4, 4]


def test_an_error_points_into_the_callers_list_not_the_chunk(kind):
    server = Batches(limit=5)
    with Driver(kind, server).open() as call:
        with pytest.raises(InvalidRequestError) as raised:
            call("embed", images(12, bad=8))
        with pytest.raises(InvalidRequestError) as item:
            call("add_items", "shapes", [(f"id-{n}", image) for n, image in enumerate(images(12, bad=11))])
    error = raised.value
    assert (error.code, error.loc, error.message) == ("invalid_image", ("inputs", 8, "image"), "not an image")
    assert isinstance(error.__cause__, httpx.HTTPStatusError)
    assert error.__context__.loc == ("inputs", 3, "image")  # the chunk's own error, left as it was
    assert item.value.loc == ("items", 11, "image")


def test_a_body_over_the_byte_limit_is_halved_without_lowering_the_input_limit(kind):
    server = Batches(limit=64, byte_limit=70)  # bodies: 8 inputs ~160 bytes, 2 ~50
    driver = Driver(kind, server)
    with driver.open() as call:
        out = call("embed", images(8))
        assert driver.client.max_inputs_per_request == 64
    assert out[:, 0].tolist() == list(range(8))
    assert server.sizes[:3] == [8, 4, 2]


def test_a_limit_that_would_not_help_is_raised(kind):
    server = Batches(limit=1)
    with Driver(kind, server).open(max_inputs_per_request=1) as call, pytest.raises(InvalidRequestError):
        call("embed", images(1, bad=0))
    assert server.sizes == [1]


def test_list_items_pages_through_a_collection(kind):
    server = Batches()
    with Driver(kind, server).open() as call:
        first = call("list_items", "shapes", limit=2)
        second = call("list_items", "shapes", after=first.next_after, limit=2)
    assert isinstance(first, ItemPage) and [i.id for i in first.items] == ["id-0", "id-1"]
    assert [i.id for i in second.items] == ["id-2", "id-3"] and second.next_after == "4"
    assert server.pages == [{"limit": "2"}, {"limit": "2", "after": "2"}]


# --- Client is AsyncClient on a private event loop ------------------------------------------


def test_client_has_every_method_of_async_client_with_its_documentation():
    public = {name for name, _ in inspect.getmembers(AsyncClient) if not name.startswith("_")}
    assert public - {"aclose"} <= set(dir(Client))
    for name in public - {"aclose", "embed", "embed_under", "embed_text", "max_inputs_per_request"}:
        assert getattr(Client, name).__doc__ == getattr(AsyncClient, name).__doc__, name
        sync, run = inspect.signature(getattr(Client, name)), inspect.signature(getattr(AsyncClient, name))
        assert sync == run, name
    for name in ("embed", "embed_under", "embed_text"):  # no concurrency argument, one chunk at a time
        parameters = inspect.signature(getattr(Client, name)).parameters
        assert "concurrency" not in parameters and getattr(Client, name).__doc__


def loop_threads() -> int:
    return sum(thread.name == "focalserve-client" for thread in threading.enumerate())


def test_each_client_runs_one_loop_thread_until_closed():
    before = loop_threads()
    client = Client("http://fake", transport=httpx.MockTransport(Batches()))
    assert loop_threads() == before + 1
    client.close()
    client.close()
    assert loop_threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        client.embed(images(1))


async def test_client_works_inside_a_running_event_loop():
    with Client("http://fake", transport=httpx.MockTransport(Batches())) as client:
        assert client.embed(images(3))[:, 0].tolist() == [0, 1, 2]


def test_an_async_transport_is_used_as_it_is():
    server = Batches(limit=2)

    class Counting(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            await request.aread()
            return server(request)

    transport = Counting()
    with Client("http://fake", transport=transport) as client:
        assert client.embed(images(3)).shape == (3, 2)
    assert transport.calls == 3 and server.sizes == [3, 2, 1]


def test_a_gzip_answer_through_a_sync_transport_is_decoded_once():
    import gzip

    def handler(request: httpx.Request) -> httpx.Response:
        body = gzip.compress(json.dumps({"status": "ok", "detail": {}}).encode())
        return httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"})

    with Client("http://fake", transport=httpx.MockTransport(handler)) as client:
        assert client.health().status == "ok"


def test_write_outcome_unknown_is_retried_only_where_a_retry_is_safe():
    """The server's answer when its database lost the connection during COMMIT (a stand-in server:
    the real one's answer is tests/reliability/test_database_faults.py's)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        error = {"error": {"code": "write_outcome_unknown", "message": "may or may not"}}
        if len(calls) == 1 or request.method == "POST":
            return httpx.Response(503, json=error, headers={"Retry-After": "0"})
        return httpx.Response(204)

    with Client("http://fake", transport=httpx.MockTransport(handler), backoff_base=0) as client:
        with pytest.raises(ServerError) as raised:
            client.create_collection("c")  # a retry could answer 409 for the collection this call made
        assert raised.value.code == "write_outcome_unknown" and calls == ["POST"]
        calls.clear()
        client.delete_item("c", "x")  # idempotent: retried after the unknown outcome
        assert calls == ["DELETE", "DELETE"]
