"""What lets `Client` be a blocking face of `AsyncClient`: an event loop of its own in a
background thread (as infinity-emb's sync engine), and a sync httpx transport made awaitable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

_Result = TypeVar("_Result")
_CLOSE_TIMEOUT_S = 10.0


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread; blocking callers hand it coroutines.

    Its own loop, not the caller's: a blocking call works the same from plain code, from a
    thread, or from inside someone else's running loop (a notebook).
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, _Result]) -> _Result:
        """Run `coroutine` on the loop and wait for its result (or exception)."""
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("the client is closed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking call from the client's own event loop would deadlock")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the requests the caller gave up on
            raise

    def close(self) -> None:
        """Finish the loop's worker threads, stop the loop and its thread (idempotent)."""
        if self._loop.is_closed():
            return
        if threading.current_thread() is self._thread:  # collected on the loop's own thread
            self._loop.call_soon(self._loop.stop)
            return
        try:
            self.run(self._loop.shutdown_default_executor())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CLOSE_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()


class AwaitableTransport(httpx.AsyncBaseTransport):
    """A sync httpx transport (a proxy, custom TLS, a test's counting transport) for an
    httpx.AsyncClient: each request runs in a worker thread, its raw body read there."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # a byte stream now, which the sync transport can send
        status, headers, raw, extensions = await asyncio.to_thread(self._exchange, request)
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(raw), extensions=extensions
        )

    def _exchange(
        self, request: httpx.Request
    ) -> tuple[int, httpx.Headers, bytes, dict[str, Any]]:
        response = self.transport.handle_request(request)
        try:
            if not isinstance(response.stream, httpx.SyncByteStream):
                raise TypeError(f"{type(self.transport).__name__} answered with an async stream")
            # The stream itself, not iter_raw(): an in-memory answer (a mock's) is already read.
            # Still encoded: the async client decodes it.
            raw = b"".join(response.stream)
        finally:
            response.close()
        return response.status_code, response.headers, raw, dict(response.extensions)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.transport.close)
