"""`Client` and `AsyncClient`: the FocalServe HTTP API from Python.

Both build the same requests (`_Core`) and differ only in how they send them: `Client` sends
embedding chunks one after another and item chunks from a thread pool; `AsyncClient` sends
both concurrently on the event loop, bounded by a semaphore.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from focalserve_client._images import ImageLike, as_image_list, b64_image
from focalserve_client._transport import Call, RetryPolicy, asend, send
from focalserve_client.errors import (
    ConditionFailedError,
    FocalServeError,
    InvalidRequestError,
    NotFoundError,
    TimeoutError,
)
from focalserve_client.instructions import normalise_instruction
from focalserve_client.schemas import (
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    ConditionCreate,
    ConditionInfo,
    EmbedRequest,
    HealthResponse,
    IndexKind,
    ItemIn,
    ItemInfo,
    ItemsAdd,
    ModelInfo,
    ModelsResponse,
    SearchRequest,
    SearchResponse,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_MAX_INPUTS"]

DEFAULT_MAX_INPUTS = 64
"""Inputs per request until the server reports a lower limit (its `too_many_inputs` error)."""

Metadata = Mapping[str, str | int | float | bool | None]
ItemLike = tuple | Mapping[str, Any]
"""(id, image) / (id, image, metadata) tuples, or {"id", "image", "metadata"} mappings."""
Instructions = str | Sequence[str | None] | None

_LIMIT = re.compile(r"the limit is (\d+)")
_POSITION = re.compile(r"(inputs|items)\[(\d+)\]")
_USER_AGENT = "focalserve-client/0.1.0"


class _Core:
    """Configuration and everything that does not depend on sync or async sending."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        max_inputs_per_request: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        if max_inputs_per_request < 1:
            raise ValueError("max_inputs_per_request must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self._max_inputs = max_inputs_per_request
        self._headers = {"User-Agent": _USER_AGENT, **(headers or {})}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout

    @property
    def max_inputs_per_request(self) -> int:
        """Inputs per request: as configured, lowered once the server reports its limit."""
        return self._max_inputs

    # request bodies ----------------------------------------------------------------------

    @staticmethod
    def _image_inputs(images: list[ImageLike], instructions: Instructions) -> list[dict[str, Any]]:
        if instructions is None or isinstance(instructions, str):
            per_image = [instructions] * len(images)
        else:
            per_image = list(instructions)
            if len(per_image) != len(images):
                raise ValueError(
                    f"{len(images)} images but {len(per_image)} instructions: pass one "
                    "instruction for all, or one per image"
                )
        return [
            {"image": b64_image(image), "instruction": instruction}
            for image, instruction in zip(images, per_image, strict=True)
        ]

    @staticmethod
    def _text_inputs(texts: str | Sequence[str]) -> list[dict[str, Any]]:
        return [{"text": text} for text in ([texts] if isinstance(texts, str) else list(texts))]

    @staticmethod
    def _embed_call(inputs: list[dict[str, Any]], model: str | None) -> Call:
        body = EmbedRequest.model_validate({"model": model, "inputs": inputs})
        return Call("POST", "/embed", json=body.model_dump(exclude_none=True))

    @staticmethod
    def _embeddings(response: httpx.Response, expected: int) -> np.ndarray:
        data = sorted(response.json()["data"], key=lambda entry: entry["index"])
        if len(data) != expected:
            raise FocalServeError(
                f"the server returned {len(data)} embeddings for {expected} inputs"
            )
        return np.asarray([entry["embedding"] for entry in data], dtype=np.float32)

    @staticmethod
    def _items_payload(chunk: list[tuple[str, ImageLike, Metadata]]) -> dict[str, Any]:
        items = [
            ItemIn(id=item_id, image=b64_image(image), metadata=dict(metadata))
            for item_id, image, metadata in chunk
        ]
        return ItemsAdd(items=items).model_dump(mode="json")

    @staticmethod
    def _search_call(
        collection: str,
        condition: str | None,
        image: ImageLike | None,
        text: str | None,
        item_id: str | None,
        k: int,
        filter: Metadata | None,
    ) -> Call:
        query = {
            "image": b64_image(image) if image is not None else None,
            "text": text,
            "item_id": item_id,
        }
        body = SearchRequest.model_validate(
            {
                "collection": collection,
                "condition": condition,
                "query": query,
                "k": k,
                "filter": dict(filter or {}),
            }
        )
        return Call("POST", "/search", json=body.model_dump(mode="json"))

    # paths and chunks --------------------------------------------------------------------

    @staticmethod
    def _collection_path(name: str) -> str:
        return f"/collections/{quote(name, safe='')}"

    def _item_path(self, collection: str, item_id: str) -> str:
        # ids may hold '/': the route takes the rest of the path. Dot segments are escaped so
        # that URL normalisation cannot rewrite them.
        segments = [
            quote(segment, safe="") if segment not in (".", "..") else "%2E" * len(segment)
            for segment in item_id.split("/")
        ]
        return f"{self._collection_path(collection)}/items/{'/'.join(segments)}"

    def _chunks(self, values: list[Any]) -> list[tuple[int, list[Any]]]:
        size = self._max_inputs
        return [(start, values[start : start + size]) for start in range(0, len(values), size)]

    def _item_chunks(
        self, items: Iterable[ItemLike], chunk_size: int
    ) -> Iterator[tuple[int, list]]:
        """Lazily: (offset, [(id, image, metadata), ...]) within chunk size and server limit."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        iterator, offset = iter(items), 0
        while chunk := [
            _as_item(item) for item in itertools.islice(iterator, min(chunk_size, self._max_inputs))
        ]:
            yield offset, chunk
            offset += len(chunk)

    def _learned_limit(self, error: InvalidRequestError, size: int) -> int | None:
        """The server's input limit from its `too_many_inputs` error, when it is below `size`."""
        match = _LIMIT.search(error.message) if error.code == "too_many_inputs" else None
        if match is None or not 1 <= int(match.group(1)) < size:
            return None
        self._max_inputs = min(self._max_inputs, int(match.group(1)))
        return self._max_inputs

    @staticmethod
    def _shifted(error: FocalServeError, offset: int) -> FocalServeError:
        """Report an input's position in the caller's list, not in its chunk."""
        if offset:
            error.message = _POSITION.sub(
                lambda m: f"{m.group(1)}[{int(m.group(2)) + offset}]", error.message, 1
            )
        return error

    @staticmethod
    def _matching(conditions: list[ConditionInfo], instruction: str | None) -> ConditionInfo | None:
        wanted = (
            {None} if instruction is None else {instruction, normalise_instruction(instruction)}
        )
        return next((c for c in conditions if c.instruction in wanted), None)

    @staticmethod
    def _finished(
        collection: str, condition: ConditionInfo | None, instruction: str | None
    ) -> bool:
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
        return condition.status == "ready"

    def _http_options(self, transport: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": self._timeout,
            "headers": self._headers,
        }
        if transport is not None:
            options["transport"] = transport
        return options


def _as_item(item: ItemLike) -> tuple[str, ImageLike, Metadata]:
    if isinstance(item, Mapping):
        unknown = set(item) - {"id", "image", "metadata"}
        if unknown or "id" not in item or "image" not in item:
            raise ValueError(
                f"an item mapping needs 'id', 'image' and optional 'metadata'; got {sorted(item)}"
            )
        return item["id"], item["image"], item.get("metadata") or {}
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0], item[1], (item[2] if len(item) == 3 else None) or {}
    raise TypeError(
        f"items are (id, image[, metadata]) tuples or mappings, not {type(item).__name__}"
    )


class _Progress:
    """A tqdm bar when asked for and tqdm is installed; otherwise nothing."""

    def __init__(self, enabled: bool, total: int | None, description: str) -> None:
        self._bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            warnings.warn(
                "progress=True needs tqdm (pip install tqdm); continuing without a bar",
                stacklevel=3,
            )
            return
        self._bar = tqdm(total=total, desc=description, unit="item")

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _length(items: Iterable[Any]) -> int | None:
    return len(items) if isinstance(items, Sized) else None


class Client(_Core):
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
        transport: an httpx transport (tests, proxies, custom TLS); httpx's default otherwise.

    Every method raises the errors of `focalserve_client.errors`: `ConnectionError`,
    `TimeoutError`, `OverloadedError`, `NotFoundError`, `InvalidRequestError`, `ServerError`.
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            max_retries,
            backoff_base,
            backoff_max,
            max_inputs_per_request,
            headers,
        )
        self._http = httpx.Client(**self._http_options(transport))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
        return send(self._http, self._policy, call)

    # embeddings --------------------------------------------------------------------------

    def embed(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: Instructions = None,
        model: str | None = None,
    ) -> np.ndarray:
        """Embed images, each under its instruction (FocalLens) or none (CLIP): float32 (n, D).

        `images`: one image or a sequence (paths, encoded bytes, binary files, PIL images, HxWx3
        uint8 arrays, or an (N, H, W, 3) array). `instructions`: one string for every image, or
        one per image. Inputs beyond the server's limit are split over several requests, sent
        one after another.
        """
        inputs = self._image_inputs(as_image_list(images), instructions)
        return self._embed_all(inputs, model)

    def embed_text(self, texts: str | Sequence[str], model: str | None = None) -> np.ndarray:
        """Embed texts with the family's text tower (the query side of search): float32 (n, D)."""
        return self._embed_all(self._text_inputs(texts), model)

    def _embed_all(self, inputs: list[dict[str, Any]], model: str | None) -> np.ndarray:
        if not inputs:
            raise ValueError("nothing to embed")
        return np.concatenate(
            [self._embed_chunk(chunk, offset, model) for offset, chunk in self._chunks(inputs)]
        )

    def _embed_chunk(
        self, chunk: list[dict[str, Any]], offset: int, model: str | None
    ) -> np.ndarray:
        try:
            return self._embeddings(self._send(self._embed_call(chunk, model)), len(chunk))
        except InvalidRequestError as error:
            limit = self._learned_limit(error, len(chunk))
            if limit is None:
                self._shifted(error, offset)
                raise
        return np.concatenate(
            [
                self._embed_chunk(chunk[start : start + limit], offset + start, model)
                for start in range(0, len(chunk), limit)
            ]
        )

    # collections -------------------------------------------------------------------------

    def create_collection(
        self, name: str, model: str | None = None, index: IndexKind = "flat"
    ) -> CollectionInfo:
        """Create a collection bound to one model family (InvalidRequestError 409 if it exists)."""
        body = CollectionCreate(name=name, model=model, index=index).model_dump(mode="json")
        response = self._send(Call("POST", "/collections", json=body, idempotent=False))
        return CollectionInfo.model_validate_json(response.content)

    def get_collection(self, name: str) -> CollectionInfo:
        """One collection: item count, dimension, conditions with their build progress."""
        return CollectionInfo.model_validate_json(
            self._send(Call("GET", self._collection_path(name))).content
        )

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection of a loaded model family."""
        return CollectionList.model_validate_json(
            self._send(Call("GET", "/collections")).content
        ).collections

    def delete_collection(self, name: str) -> None:
        """Delete a collection with its items, vectors and indexes."""
        self._send(Call("DELETE", self._collection_path(name)))

    def add_items(
        self,
        collection: str,
        items: Iterable[ItemLike],
        chunk_size: int = 32,
        concurrency: int = 4,
        progress: bool = False,
    ) -> int:
        """Add (or replace) items; returns how many were added.

        `items`: (id, image[, metadata]) tuples or {"id", "image", "metadata"} mappings, any
        iterable (read lazily). Chunks of `chunk_size` go out from a pool of `concurrency`
        threads; each chunk is committed on its own, so after an error the earlier chunks are
        stored, and adding everything again is safe (an existing id is replaced).
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        bar = _Progress(progress, _length(items), f"adding to {collection}")
        added = 0
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="focalserve-add") as pool:
                pending: set[Future[int]] = set()
                try:
                    for offset, chunk in self._item_chunks(items, chunk_size):
                        if len(pending) >= concurrency:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            added += sum(future.result() for future in done)
                        pending.add(pool.submit(self._add_counted, collection, chunk, offset, bar))
                    added += sum(future.result() for future in wait(pending).done)
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
        finally:
            bar.close()
        return added

    def _add_counted(self, collection: str, chunk: list, offset: int, bar: _Progress) -> int:
        added = self._add_chunk(collection, chunk, offset)
        bar.update(len(chunk))
        return added

    def _add_chunk(self, collection: str, chunk: list, offset: int) -> int:
        call = Call(
            "POST", f"{self._collection_path(collection)}/items", json=self._items_payload(chunk)
        )
        try:
            return int(self._send(call).json()["added"])
        except InvalidRequestError as error:
            limit = self._learned_limit(error, len(chunk))
            if limit is None:
                self._shifted(error, offset)
                raise
        return sum(
            self._add_chunk(collection, chunk[start : start + limit], offset + start)
            for start in range(0, len(chunk), limit)
        )

    def get_item(self, collection: str, item_id: str) -> ItemInfo:
        """One item's metadata and image hash (NotFoundError if absent)."""
        return ItemInfo.model_validate_json(
            self._send(Call("GET", self._item_path(collection, item_id))).content
        )

    def delete_item(self, collection: str, item_id: str) -> None:
        """Delete an item from the collection and every condition's index."""
        self._send(Call("DELETE", self._item_path(collection, item_id)))

    # conditions and search ---------------------------------------------------------------

    def add_condition(
        self, collection: str, instruction: str, index: IndexKind = "flat"
    ) -> ConditionInfo:
        """Register an instruction on a collection; its index builds in the background."""
        body = ConditionCreate(instruction=instruction, index=index).model_dump(mode="json")
        response = self._send(
            Call("POST", f"{self._collection_path(collection)}/conditions", json=body)
        )
        return ConditionInfo.model_validate_json(response.content)

    def list_conditions(self, collection: str) -> list[ConditionInfo]:
        """The collection's conditions with their status and build progress."""
        response = self._send(Call("GET", f"{self._collection_path(collection)}/conditions"))
        return [ConditionInfo.model_validate(entry) for entry in response.json()]

    def wait_for_condition(
        self,
        collection: str,
        instruction: str | None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
    ) -> ConditionInfo:
        """Poll until the condition is `ready` (None: a CLIP collection's view); raises
        ConditionFailedError if its build failed, NotFoundError if it is not registered,
        TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            condition = self._matching(self.list_conditions(collection), instruction)
            if self._finished(collection, condition, instruction):
                return condition
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"condition {instruction!r} on {collection!r} not ready after {timeout} s "
                    f"({condition.embedded}/{condition.total} embedded)"
                )
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    def search(
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
        (a registered instruction; None for a CLIP collection). `filter`: metadata equality."""
        response = self._send(
            self._search_call(collection, condition, image, text, item_id, k, filter)
        )
        return SearchResponse.model_validate_json(response.content)

    # service -----------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """The loaded model families."""
        return ModelsResponse.model_validate_json(self._send(Call("GET", "/models")).content).models

    def health(self) -> HealthResponse:
        """GET /healthz: the process is alive."""
        return HealthResponse.model_validate_json(self._send(Call("GET", "/healthz")).content)

    def ready(self) -> HealthResponse:
        """GET /readyz: status "ok", or "not_ready" with reasons in `detail` (not raised)."""
        response = self._send(Call("GET", "/readyz", answers=(503,)))
        return HealthResponse.model_validate_json(response.content)


class AsyncClient(_Core):
    """The asyncio twin of `Client` (same arguments, same methods, awaitable); use `async with`.

    Embedding chunks and item chunks are sent concurrently, at most `concurrency` at a time.
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
        super().__init__(
            base_url,
            api_key,
            timeout,
            max_retries,
            backoff_base,
            backoff_max,
            max_inputs_per_request,
            headers,
        )
        self._http = httpx.AsyncClient(**self._http_options(transport))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        return await asend(self._http, self._policy, call)

    # embeddings --------------------------------------------------------------------------

    async def embed(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: Instructions = None,
        model: str | None = None,
        concurrency: int = 4,
    ) -> np.ndarray:
        """As `Client.embed`; chunks beyond the server's limit go out `concurrency` at a time."""
        images = as_image_list(images)
        inputs = await asyncio.to_thread(self._image_inputs, images, instructions)
        return await self._embed_all(inputs, model, concurrency)

    async def embed_text(
        self, texts: str | Sequence[str], model: str | None = None, concurrency: int = 4
    ) -> np.ndarray:
        """As `Client.embed_text`."""
        return await self._embed_all(self._text_inputs(texts), model, concurrency)

    async def _embed_all(
        self, inputs: list[dict[str, Any]], model: str | None, concurrency: int
    ) -> np.ndarray:
        if not inputs:
            raise ValueError("nothing to embed")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        slots = asyncio.Semaphore(concurrency)

        async def bounded(offset: int, chunk: list[dict[str, Any]]) -> np.ndarray:
            async with slots:
                return await self._embed_chunk(chunk, offset, model)

        tasks = [
            asyncio.ensure_future(bounded(offset, chunk)) for offset, chunk in self._chunks(inputs)
        ]
        return np.concatenate(await _gather_or_cancel(tasks))

    async def _embed_chunk(
        self, chunk: list[dict[str, Any]], offset: int, model: str | None
    ) -> np.ndarray:
        try:
            return self._embeddings(await self._send(self._embed_call(chunk, model)), len(chunk))
        except InvalidRequestError as error:
            limit = self._learned_limit(error, len(chunk))
            if limit is None:
                self._shifted(error, offset)
                raise
        parts = [
            await self._embed_chunk(chunk[start : start + limit], offset + start, model)
            for start in range(0, len(chunk), limit)
        ]
        return np.concatenate(parts)

    # collections -------------------------------------------------------------------------

    async def create_collection(
        self, name: str, model: str | None = None, index: IndexKind = "flat"
    ) -> CollectionInfo:
        """As `Client.create_collection`."""
        body = CollectionCreate(name=name, model=model, index=index).model_dump(mode="json")
        response = await self._send(Call("POST", "/collections", json=body, idempotent=False))
        return CollectionInfo.model_validate_json(response.content)

    async def get_collection(self, name: str) -> CollectionInfo:
        """As `Client.get_collection`."""
        response = await self._send(Call("GET", self._collection_path(name)))
        return CollectionInfo.model_validate_json(response.content)

    async def list_collections(self) -> list[CollectionInfo]:
        """As `Client.list_collections`."""
        response = await self._send(Call("GET", "/collections"))
        return CollectionList.model_validate_json(response.content).collections

    async def delete_collection(self, name: str) -> None:
        """As `Client.delete_collection`."""
        await self._send(Call("DELETE", self._collection_path(name)))

    async def add_items(
        self,
        collection: str,
        items: Iterable[ItemLike],
        chunk_size: int = 32,
        concurrency: int = 4,
        progress: bool = False,
    ) -> int:
        """As `Client.add_items`; at most `concurrency` chunks in flight (an asyncio semaphore).
        Images are encoded in a worker thread, off the event loop."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        slots = asyncio.Semaphore(concurrency)
        bar = _Progress(progress, _length(items), f"adding to {collection}")
        tasks: set[asyncio.Task[int]] = set()
        added = 0

        async def one(offset: int, chunk: list) -> int:
            try:
                count = await self._add_chunk(collection, chunk, offset)
                bar.update(len(chunk))
                return count
            finally:
                slots.release()

        try:
            for offset, chunk in self._item_chunks(items, chunk_size):
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

    async def _add_chunk(self, collection: str, chunk: list, offset: int) -> int:
        payload = await asyncio.to_thread(self._items_payload, chunk)
        try:
            response = await self._send(
                Call("POST", f"{self._collection_path(collection)}/items", json=payload)
            )
            return int(response.json()["added"])
        except InvalidRequestError as error:
            limit = self._learned_limit(error, len(chunk))
            if limit is None:
                self._shifted(error, offset)
                raise
        counts = [
            await self._add_chunk(collection, chunk[start : start + limit], offset + start)
            for start in range(0, len(chunk), limit)
        ]
        return sum(counts)

    async def get_item(self, collection: str, item_id: str) -> ItemInfo:
        """As `Client.get_item`."""
        response = await self._send(Call("GET", self._item_path(collection, item_id)))
        return ItemInfo.model_validate_json(response.content)

    async def delete_item(self, collection: str, item_id: str) -> None:
        """As `Client.delete_item`."""
        await self._send(Call("DELETE", self._item_path(collection, item_id)))

    # conditions and search ---------------------------------------------------------------

    async def add_condition(
        self, collection: str, instruction: str, index: IndexKind = "flat"
    ) -> ConditionInfo:
        """As `Client.add_condition`."""
        body = ConditionCreate(instruction=instruction, index=index).model_dump(mode="json")
        response = await self._send(
            Call("POST", f"{self._collection_path(collection)}/conditions", json=body)
        )
        return ConditionInfo.model_validate_json(response.content)

    async def list_conditions(self, collection: str) -> list[ConditionInfo]:
        """As `Client.list_conditions`."""
        response = await self._send(Call("GET", f"{self._collection_path(collection)}/conditions"))
        return [ConditionInfo.model_validate(entry) for entry in response.json()]

    async def wait_for_condition(
        self,
        collection: str,
        instruction: str | None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
    ) -> ConditionInfo:
        """As `Client.wait_for_condition`."""
        deadline = time.monotonic() + timeout
        while True:
            condition = self._matching(await self.list_conditions(collection), instruction)
            if self._finished(collection, condition, instruction):
                return condition
            if time.monotonic() >= deadline:
                raise TimeoutError(
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
        """As `Client.search`."""
        call = await asyncio.to_thread(
            self._search_call, collection, condition, image, text, item_id, k, filter
        )
        return SearchResponse.model_validate_json((await self._send(call)).content)

    # service -----------------------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        """As `Client.models`."""
        return ModelsResponse.model_validate_json(
            (await self._send(Call("GET", "/models"))).content
        ).models

    async def health(self) -> HealthResponse:
        """As `Client.health`."""
        return HealthResponse.model_validate_json(
            (await self._send(Call("GET", "/healthz"))).content
        )

    async def ready(self) -> HealthResponse:
        """As `Client.ready`."""
        response = await self._send(Call("GET", "/readyz", answers=(503,)))
        return HealthResponse.model_validate_json(response.content)


async def _gather_or_cancel(tasks: list[asyncio.Future[Any]]) -> list[Any]:
    """All results in order; on the first error the other tasks are cancelled."""
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        await _cancel(tasks)
        raise


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
