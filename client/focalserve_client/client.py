"""`AsyncClient` and `Client`: the FocalServe HTTP API from Python.

`AsyncClient` is the implementation: every API method is written there, once. `Client` is its
blocking face: each method runs the async client's coroutine on a private event loop in a
background thread and waits for the result (as infinity-emb's sync engine does).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence, Sized
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray

from focalserve_client._calls import (
    Instructions,
    Item,
    ItemLike,
    Metadata,
    add_condition_call,
    add_items_call,
    collection_path,
    create_collection_call,
    embed_call,
    image_inputs,
    image_inputs_under,
    item_chunks,
    item_path,
    search_call,
    text_inputs,
)
from focalserve_client._images import ImageLike, as_image_list
from focalserve_client._progress import Progress
from focalserve_client._sync import AwaitableTransport, BackgroundLoop
from focalserve_client._transport import Call, RetryPolicy, send
from focalserve_client.errors import (
    ConditionFailedError,
    FocalServeError,
    InvalidRequestError,
    NotFoundError,
    RequestTimeoutError,
)
from focalserve_client.instructions import normalise_instruction
from focalserve_client.schemas import (
    SEQ_HEADER,
    CollectionInfo,
    CollectionList,
    ConditionInfo,
    HealthResponse,
    IndexKind,
    ItemInfo,
    ItemPage,
    ItemsAdded,
    ModelInfo,
    ModelsResponse,
    SearchResponse,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_MAX_INPUTS"]

DEFAULT_MAX_INPUTS = 64
"""Inputs per request until the server reports a lower limit (its `too_many_inputs` error)."""

Embeddings = NDArray[np.float32]
"""(n, D) float32, one L2-normalised row per input."""

_USER_AGENT = "focalserve-client/0.1.0"
_BATCHES = ("inputs", "items")  # the request lists that the client splits into chunks

_Part = TypeVar("_Part")
_Result = TypeVar("_Result")
_Params = ParamSpec("_Params")


class AsyncClient:
    """A FocalServe client for asyncio; use `async with` (or await `aclose()`).

    Args:
        base_url: the gateway, e.g. "http://127.0.0.1:8000".
        api_key: sent as `Authorization: Bearer <key>` when given.
        timeout: seconds (or an httpx.Timeout) for each HTTP request.
        max_retries: retries after the first attempt, on connection failures and 503 answers.
        backoff_base, backoff_max: retry `n` waits uniformly in [0, min(max, base * 2**n)] seconds
            ("full jitter"); a 503's Retry-After is honoured instead, capped at `backoff_max`.
        max_inputs_per_request: inputs per /embed or items per add request; lowered automatically
            when the server reports a smaller limit.
        transport: an httpx async transport (tests, proxies, custom TLS); httpx's default otherwise.

    Embedding chunks and item chunks are sent concurrently, at most `concurrency` at a time.
    Every method raises the errors of `focalserve_client.errors`: `ServerUnreachableError`,
    `RequestTimeoutError`, `OverloadedError`, `NotFoundError`, `InvalidRequestError`,
    `ServerError`.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_inputs_per_request: int = DEFAULT_MAX_INPUTS,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_inputs_per_request < 1:
            raise ValueError("max_inputs_per_request must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self._max_inputs = max_inputs_per_request
        sent_headers = {"User-Agent": _USER_AGENT, **(headers or {})}
        if api_key is not None:
            sent_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=sent_headers, transport=transport
        )
        self.last_seq = 0  # the newest change-log position this client has seen; searches wait for it

    @property
    def max_inputs_per_request(self) -> int:
        """Inputs per request: as configured, lowered once the server reports its limit."""
        return self._max_inputs

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        response = await send(self._http, self._policy, call)
        if (seq := response.headers.get(SEQ_HEADER, "")).isdigit():
            self.last_seq = max(self.last_seq, int(seq))
        return response

    # embeddings --------------------------------------------------------------------------

    async def embed(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: Instructions = None,
        model: str | None = None,
        concurrency: int = 4,
    ) -> Embeddings:
        """Embed images, each under its instruction (FocalLens) or none (CLIP): float32 (n, D).

        `images`: one image or a sequence (paths, encoded bytes, binary files, PIL images, HxWx3
        uint8 arrays, or an (N, H, W, 3) array). `instructions`: one string for every image, or
        one per image. Inputs beyond the server's limit are split over several requests, at
        most `concurrency` in flight; images are encoded in a worker thread.
        """
        inputs = await asyncio.to_thread(image_inputs, as_image_list(images), instructions)
        return await self._embed_all(inputs, model, concurrency)

    async def embed_under(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: Sequence[str],
        model: str | None = None,
        concurrency: int = 4,
    ) -> NDArray[np.float32]:
        """Embed every image under each of `instructions` (FocalLens): float32 (n, K, D), in the
        order given. A readout family runs each image once for all K; a full one once per instruction.
        Requests are sized so that their embeddings stay within the server's limit."""
        texts = list(instructions) if not isinstance(instructions, str) else []
        inputs = await asyncio.to_thread(image_inputs_under, as_image_list(images), texts)
        flat = await self._embed_all(inputs, model, concurrency, per_input=len(texts))
        return flat.reshape(len(inputs), len(texts), -1)

    async def embed_text(
        self, texts: str | Sequence[str], model: str | None = None, concurrency: int = 4
    ) -> Embeddings:
        """Embed texts with the family's text tower (the query side of search): float32 (n, D)."""
        return await self._embed_all(text_inputs(texts), model, concurrency)

    async def _embed_all(
        self, inputs: list[dict[str, Any]], model: str | None, concurrency: int, per_input: int = 1
    ) -> Embeddings:
        if not inputs:
            raise ValueError("nothing to embed")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        slots = asyncio.Semaphore(concurrency)

        async def embed_chunk(chunk: list[dict[str, Any]]) -> Embeddings:
            return _embeddings(await self._send(embed_call(chunk, model)), len(chunk) * per_input)

        async def bounded(offset: int, chunk: list[dict[str, Any]]) -> Embeddings:
            async with slots:
                return np.concatenate(await self._split_on_refusal(chunk, offset, embed_chunk))

        size = max(1, self._max_inputs // per_input)  # the server's limit counts embeddings
        tasks = [
            asyncio.ensure_future(bounded(start, inputs[start : start + size]))
            for start in range(0, len(inputs), size)
        ]
        return np.concatenate(await _gather_or_cancel(tasks))

    # chunks the server refuses as too large ----------------------------------------------

    async def _split_on_refusal(
        self,
        chunk: list[_Part],
        offset: int,
        send_chunk: Callable[[list[_Part]], Awaitable[_Result]],
    ) -> list[_Result]:
        """`send_chunk(chunk)`; when the server refuses the chunk as too large, its parts, sent
        one after another (the input limit it reports is kept for later chunks). `offset` is the
        chunk's start in the caller's list: an error's `loc` is re-based onto that list."""
        try:
            return [await send_chunk(chunk)]
        except InvalidRequestError as error:
            size = self._part_size(error, len(chunk))
            if size is None:
                rebased = _rebased(error, offset)
                if rebased is error:
                    raise
                raise rebased from error.__cause__
        results: list[_Result] = []
        for start in range(0, len(chunk), size):
            part = chunk[start : start + size]
            results += await self._split_on_refusal(part, offset + start, send_chunk)
        return results

    def _part_size(self, error: InvalidRequestError, size: int) -> int | None:
        """Inputs per request after `error` refused `size` of them; None if splitting cannot help."""
        if error.code == "too_many_inputs" and error.limit is not None and 1 <= error.limit < size:
            self._max_inputs = min(self._max_inputs, error.limit)
            return self._max_inputs
        if error.code == "payload_too_large" and size > 1:
            return (size + 1) // 2  # the body's bytes are over, not the count: halve it
        return None

    # collections -------------------------------------------------------------------------

    async def create_collection(
        self, name: str, model: str | None = None, index: IndexKind = "auto",
        index_options: Mapping[str, Any] | None = None,
    ) -> CollectionInfo:
        """Create a collection bound to one model family (InvalidRequestError 409 if it exists).

        `index` and `index_options` apply to a plain CLIP collection's one view (see `add_condition`).
        """
        response = await self._send(create_collection_call(name, model, index, index_options or {}))
        return CollectionInfo.model_validate_json(response.content)

    async def get_collection(self, name: str) -> CollectionInfo:
        """One collection: item count, dimension, conditions with their build progress."""
        response = await self._send(Call("GET", collection_path(name)))
        return CollectionInfo.model_validate_json(response.content)

    async def list_collections(self) -> list[CollectionInfo]:
        """Every collection of a loaded model family."""
        response = await self._send(Call("GET", "/collections"))
        return CollectionList.model_validate_json(response.content).collections

    async def delete_collection(self, name: str) -> None:
        """Delete a collection with its items, vectors and indexes."""
        await self._send(Call("DELETE", collection_path(name)))

    # items -------------------------------------------------------------------------------

    async def add_items(
        self,
        collection: str,
        items: Iterable[ItemLike],
        chunk_size: int = 32,
        concurrency: int = 4,
        progress: bool = False,
    ) -> int:
        """Add (or replace) items; returns how many were added.

        `items`: (id, image[, metadata]) tuples or {"id", "image", "metadata"} mappings, any
        iterable (read lazily). Chunks of `chunk_size` go out at most `concurrency` at a time,
        their images encoded in worker threads. Each chunk is committed on its own, so after an
        error the earlier chunks are stored, and adding everything again is safe (an existing id
        is replaced). `progress`: a tqdm bar (needs tqdm).
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        slots = asyncio.Semaphore(concurrency)
        total = len(items) if isinstance(items, Sized) else None
        bar = Progress(progress, total, f"adding to {collection}")
        tasks: set[asyncio.Task[int]] = set()
        added = 0

        async def add_chunk(chunk: list[Item]) -> int:
            call = await asyncio.to_thread(add_items_call, collection, chunk)
            return ItemsAdded.model_validate_json((await self._send(call)).content).added

        async def one(offset: int, chunk: list[Item]) -> int:
            try:
                count = sum(await self._split_on_refusal(chunk, offset, add_chunk))
                bar.update(len(chunk))
                return count
            finally:
                slots.release()

        try:
            for offset, chunk in item_chunks(items, lambda: min(chunk_size, self._max_inputs)):
                await slots.acquire()
                for task in [task for task in tasks if task.done()]:
                    tasks.discard(task)
                    added += task.result()  # an earlier chunk's error stops the loop here
                tasks.add(asyncio.ensure_future(one(offset, chunk)))
            return added + sum(await _gather_or_cancel(list(tasks)))
        except BaseException:
            await _cancel(tasks)
            raise
        finally:
            bar.close()

    async def list_items(
        self, collection: str, after: str | None = None, limit: int = 100
    ) -> ItemPage:
        """One page of at most `limit` (1..1000) items in insertion order; pass the page's
        `next_after` as `after` for the next one (it is None on the last page)."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = await self._send(
            Call("GET", f"{collection_path(collection)}/items", params=params)
        )
        return ItemPage.model_validate_json(response.content)

    async def get_item(self, collection: str, item_id: str) -> ItemInfo:
        """One item's metadata and image hash (NotFoundError if absent)."""
        response = await self._send(Call("GET", item_path(collection, item_id)))
        return ItemInfo.model_validate_json(response.content)

    async def delete_item(self, collection: str, item_id: str) -> None:
        """Delete an item from the collection and every condition's index."""
        await self._send(Call("DELETE", item_path(collection, item_id)))

    # conditions and search ---------------------------------------------------------------

    async def add_condition(
        self, collection: str, instruction: str, index: IndexKind = "auto",
        index_options: Mapping[str, Any] | None = None,
    ) -> ConditionInfo:
        """Register an instruction on a collection; its index builds in the background.

        `index`: "auto" (exact while small, then IVF-PQ with re-ranking, as the collection grows),
        "flat", "hnsw" or "ivfpq"; `index_options`: IndexOptions fields (nprobe, k_factor, ...),
        anything left out chosen from the collection's size.
        """
        response = await self._send(add_condition_call(collection, instruction, index, index_options or {}))
        return ConditionInfo.model_validate_json(response.content)

    async def add_conditions(
        self, collection: str, instructions: Sequence[str], index: IndexKind = "auto",
        index_options: Mapping[str, Any] | None = None,
    ) -> list[ConditionInfo]:
        """Register several instructions at once (as `add_condition` each, same index settings): their
        indexes build in one pass over the stored images, each image going to the model once for all."""
        if isinstance(instructions, str) or not instructions:
            raise ValueError("instructions: a non-empty sequence of strings")
        call = add_condition_call(collection, list(instructions), index, index_options or {})
        response = await self._send(call)
        return [ConditionInfo.model_validate(entry) for entry in response.json()]

    async def list_conditions(self, collection: str) -> list[ConditionInfo]:
        """The collection's conditions with their status and build progress."""
        response = await self._send(Call("GET", f"{collection_path(collection)}/conditions"))
        return [ConditionInfo.model_validate(entry) for entry in response.json()]

    async def wait_for_condition(
        self,
        collection: str,
        instruction: str | None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
    ) -> ConditionInfo:
        """Poll until the condition is `ready` (None: a CLIP collection's view); raises
        ConditionFailedError if its build failed, NotFoundError if it is not registered,
        RequestTimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            conditions = await self.list_conditions(collection)
            condition = _usable(collection, _matching(conditions, instruction), instruction)
            if condition.status == "ready":
                return condition
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(
                    f"condition {instruction!r} on {collection!r} not ready after {timeout} s "
                    f"({condition.embedded}/{condition.total} embedded)"
                )
            await asyncio.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    async def search(
        self,
        collection: str,
        condition: str | None = None,
        *,
        image: ImageLike | None = None,
        text: str | None = None,
        item_id: str | None = None,
        k: int = 10,
        filter: Metadata | None = None,
    ) -> SearchResponse:
        """Top-k items for exactly one of `image`, `text` or `item_id`, under `condition`
        (a registered instruction; None for a CLIP collection). `filter`: metadata equality.

        Read-your-writes: the search waits until the replica that answers has applied every write
        this client has seen acknowledged (`last_seq`), whichever replica took it."""
        call = await asyncio.to_thread(
            search_call, collection, condition, image, text, item_id, k, filter, self.last_seq
        )
        return SearchResponse.model_validate_json((await self._send(call)).content)

    # service -----------------------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        """The loaded model families."""
        response = await self._send(Call("GET", "/models"))
        return ModelsResponse.model_validate_json(response.content).models

    async def health(self) -> HealthResponse:
        """GET /healthz: the process is alive."""
        response = await self._send(Call("GET", "/healthz"))
        return HealthResponse.model_validate_json(response.content)

    async def ready(self) -> HealthResponse:
        """GET /readyz: status "ok", or "not_ready" with reasons in `detail` (not raised)."""
        response = await self._send(Call("GET", "/readyz", answers=(503,)))
        return HealthResponse.model_validate_json(response.content)


def _blocking(
    method: Callable[Concatenate[AsyncClient, _Params], Coroutine[Any, Any, _Result]],
) -> Callable[Concatenate[Client, _Params], _Result]:
    """`AsyncClient.<method>` as a blocking `Client` method: same arguments, docstring, result."""

    def blocking(self: Client, /, *args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        return self._loop.run(method(self._async, *args, **kwargs))

    functools.update_wrapper(blocking, method)
    return blocking


class Client:
    """A synchronous FocalServe client; use it as a context manager (or call `close()`).

    Args:
        base_url: the gateway, e.g. "http://127.0.0.1:8000".
        api_key: sent as `Authorization: Bearer <key>` when given.
        timeout: seconds (or an httpx.Timeout) for each HTTP request.
        max_retries: retries after the first attempt, on connection failures and 503 answers.
        backoff_base, backoff_max: retry `n` waits uniformly in [0, min(max, base * 2**n)] seconds
            ("full jitter"); a 503's Retry-After is honoured instead, capped at `backoff_max`.
        max_inputs_per_request: inputs per /embed or items per add request; lowered automatically
            when the server reports a smaller limit.
        transport: an httpx transport, sync or async (tests, proxies, custom TLS); httpx's
            default otherwise. A sync one is called from worker threads.

    The methods are `AsyncClient`'s, blocking: each runs on a private event loop in a
    background thread of this client. `embed` sends its chunks one after another; `add_items`
    up to `concurrency` at a time. Every method raises the errors of `focalserve_client.errors`:
    `ServerUnreachableError`, `RequestTimeoutError`, `OverloadedError`, `NotFoundError`,
    `InvalidRequestError`, `ServerError`.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_inputs_per_request: int = DEFAULT_MAX_INPUTS,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._async = AsyncClient(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_inputs_per_request=max_inputs_per_request,
            headers=headers,
            transport=(
                AwaitableTransport(transport)
                if isinstance(transport, httpx.BaseTransport)
                else transport
            ),
        )
        self._loop = BackgroundLoop("focalserve-client")
        self._release = weakref.finalize(self, self._loop.close)  # a client never closed

    @property
    def last_seq(self) -> int:
        """The newest change-log position this client has seen; its searches wait for it."""
        return self._async.last_seq

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def max_inputs_per_request(self) -> int:
        """Inputs per request: as configured, lowered once the server reports its limit."""
        return self._async.max_inputs_per_request

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the background loop (idempotent)."""
        if self._loop.closed:
            return
        try:
            self._loop.run(self._async.aclose())
        finally:
            self._release()

    def embed(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: Instructions = None,
        model: str | None = None,
    ) -> Embeddings:
        """Embed images, each under its instruction (FocalLens) or none (CLIP): float32 (n, D).

        `images`: one image or a sequence (paths, encoded bytes, binary files, PIL images, HxWx3
        uint8 arrays, or an (N, H, W, 3) array). `instructions`: one string for every image, or
        one per image. Inputs beyond the server's limit are split over several requests, sent
        one after another.
        """
        return self._loop.run(self._async.embed(images, instructions, model, concurrency=1))

    def embed_under(
        self, images: ImageLike | Sequence[ImageLike], instructions: Sequence[str], model: str | None = None
    ) -> NDArray[np.float32]:
        """Embed every image under each of `instructions` (FocalLens): float32 (n, K, D), in the order
        given; a readout family runs each image once for all K. Requests go one after another."""
        return self._loop.run(self._async.embed_under(images, instructions, model, concurrency=1))

    def embed_text(self, texts: str | Sequence[str], model: str | None = None) -> Embeddings:
        """Embed texts with the family's text tower (the query side of search): float32 (n, D)."""
        return self._loop.run(self._async.embed_text(texts, model, concurrency=1))

    create_collection = _blocking(AsyncClient.create_collection)
    get_collection = _blocking(AsyncClient.get_collection)
    list_collections = _blocking(AsyncClient.list_collections)
    delete_collection = _blocking(AsyncClient.delete_collection)
    add_items = _blocking(AsyncClient.add_items)
    list_items = _blocking(AsyncClient.list_items)
    get_item = _blocking(AsyncClient.get_item)
    delete_item = _blocking(AsyncClient.delete_item)
    add_condition = _blocking(AsyncClient.add_condition)
    add_conditions = _blocking(AsyncClient.add_conditions)
    list_conditions = _blocking(AsyncClient.list_conditions)
    wait_for_condition = _blocking(AsyncClient.wait_for_condition)
    search = _blocking(AsyncClient.search)
    models = _blocking(AsyncClient.models)
    health = _blocking(AsyncClient.health)
    ready = _blocking(AsyncClient.ready)


# helpers -------------------------------------------------------------------------------


def _embeddings(response: httpx.Response, expected: int) -> Embeddings:
    data = sorted(response.json()["data"], key=lambda entry: entry["index"])
    if len(data) != expected:
        raise FocalServeError(f"the server returned {len(data)} embeddings for {expected} inputs")
    return np.asarray([_vector(entry["embedding"]) for entry in data], dtype=np.float32)


def _vector(embedding: list[float] | str) -> NDArray[np.float32]:
    """An embedding as numbers, or as base64 of little-endian float32 (`encoding_format`)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _rebased(error: FocalServeError, offset: int) -> FocalServeError:
    """The error with its `loc` pointing into the caller's whole list, not into the chunk sent."""
    loc = error.loc
    if not offset or not loc or len(loc) < 2 or loc[0] not in _BATCHES:
        return error
    position = loc[1]
    if not isinstance(position, int) or isinstance(position, bool):
        return error
    return error.with_loc((loc[0], position + offset, *loc[2:]))


def _matching(conditions: list[ConditionInfo], instruction: str | None) -> ConditionInfo | None:
    wanted = {None} if instruction is None else {instruction, normalise_instruction(instruction)}
    return next((c for c in conditions if c.instruction in wanted), None)


def _usable(
    collection: str, condition: ConditionInfo | None, instruction: str | None
) -> ConditionInfo:
    """The condition, unless it is not registered (NotFoundError) or its build failed."""
    if condition is None:
        raise NotFoundError(
            f"condition {instruction!r} is not registered on {collection!r}",
            status=404,
            code="not_found",
        )
    if condition.status == "failed":
        raise ConditionFailedError(
            f"building condition {condition.instruction!r} on {collection!r} failed: "
            f"{condition.error or 'no reason given'}",
            code="condition_failed",
        )
    return condition


async def _gather_or_cancel(tasks: Sequence[asyncio.Future[_Result]]) -> list[_Result]:
    """All results in order; on the first error the other tasks are cancelled."""
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        await _cancel(tasks)
        raise


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
