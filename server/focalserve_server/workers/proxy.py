"""Forwarding a front's request to the engine process's HTTP API (collections, search, readiness).

Collections live once per machine, in the engine process (an index of a million vectors is
gigabytes): a front passes their routes on unchanged over a Unix socket, body and answer
streamed, so every guarantee of the collection API (errors, `FocalServe-Seq`, `min_seq`
waits, the store's fault answers) is the engine's own. While the engine is away: 503 with
Retry-After, or, for a write whose request had left before the engine went, 503
`write_outcome_unknown`, since it may have been applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.types import Receive, Scope, Send

from focalserve_server.api.errors import render_error
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.errors import BackendUnavailable, FocalServeError, WriteOutcomeUnknown

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer",
                        b"proxy-authorization", b"proxy-authenticate", b"host"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AWAY = "the engine process is unavailable (restarting); retry shortly"
UNKNOWN_OUTCOME = WriteOutcomeUnknown(
    "the engine process went away while handling this write: it may or may not have been applied; check, or "
    "retry (adds of the same ids are idempotent)"
)


class EngineProxy:
    """An ASGI app that answers with whatever the engine process answers."""

    def __init__(self, socket_path: Path, timeout_s: float, retry_after_s: int) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://engine",
                                         timeout=httpx.Timeout(timeout_s, connect=2.0))
        self._retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope["query_string"]
        request = self._client.build_request(
            scope["method"],
            httpx.URL(path=scope["path"], query=query) if query else httpx.URL(path=scope["path"]),
            headers=[(key, value) for key, value in scope["headers"] if key.lower() not in HOP_BY_HOP],
            content=_body(receive),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectError:
            await self.unavailable(scope, receive, send, BackendUnavailable(AWAY))
            return
        except httpx.TransportError:
            safe = scope["method"] in SAFE_METHODS
            await self.unavailable(scope, receive, send, BackendUnavailable(AWAY) if safe else UNKNOWN_OUTCOME)
            return
        try:
            headers = [(key, value) for key, value in response.headers.raw if key.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def unavailable(self, scope: Scope, receive: Receive, send: Send, error: FocalServeError) -> None:
        """The engine cannot be reached: 503 with Retry-After, in the probe's own shape for `/readyz`."""
        if scope["path"] == "/readyz":  # the probe's own shape: not ready, and why
            answer = FastJSONResponse({"status": "not_ready", "detail": {"engine": error.message}}, status_code=503,
                                      headers={"Retry-After": str(self._retry_after_s)})
            await answer(scope, receive, send)
            return
        await render_error(error, self._retry_after_s)(scope, receive, send)

    async def close(self) -> None:
        await self._client.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
