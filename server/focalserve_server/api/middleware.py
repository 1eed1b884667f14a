"""ASGI middleware: the limits every request obeys (body size, a deadline), latency metrics, and a
last line for unexpected errors.

Pure ASGI (not BaseHTTPMiddleware) so an oversized body is refused as it streams in, before it
is buffered, whatever Content-Length claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from focalserve_server.api.errors import internal_error, render_error
from focalserve_server.errors import DeadlineExceeded, FocalServeError, PayloadTooLarge

logger = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class RequestLimits:
    """Refuses bodies over `max_body_bytes` (413) and answers 503 when a request outlives its
    deadline; health and metrics endpoints have no deadline, so probes never time out under load."""

    UNTIMED = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout_s: float, retry_after_s: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._error(scope, receive, send, self._too_large())
            return
        started = False
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timeout = None if scope["path"] in self.UNTIMED else self.timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._error(scope, receive, send, self._too_large())
        except TimeoutError:
            if not started:
                late = DeadlineExceeded(f"the request took longer than {self.timeout_s:g} s; retry later")
                await self._error(scope, receive, send, late)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than the limit of {self.max_body_bytes} bytes", limit=self.max_body_bytes
        )

    async def _error(self, scope: Scope, receive: Receive, send: Send, error: FocalServeError) -> None:
        await render_error(error, self.retry_after_s)(scope, receive, send)


class RecordLatency:
    """Observes each request's latency by route template and status.

    Pure ASGI: `@app.middleware("http")` (BaseHTTPMiddleware) wraps every request in an extra
    task group and body stream, which profiling showed as a measurable share of a small request.
    """

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, str, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            route = scope.get("route")
            self.observe(scope["method"], getattr(route, "path", "unmatched"), str(status),
                         time.perf_counter() - start)


class ContainErrors:
    """An unexpected error becomes a JSON 500 on a connection that stays open.

    Starlette's outermost handler answers 500 and then re-raises, and the server drops the
    connection on the way out, so a keep-alive client's next request would meet a reset.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise  # half an answer is out: only closing the connection can tell the client
            await internal_error()(scope, receive, send)
