"""The gateway app inside the test process: no subprocess, models loaded once per fixture.

`InProcessGateway` is Starlette's `TestClient` (an `httpx.Client`) over `create_app(Settings)`.
Entered as a context manager it runs the app's lifespan (backend, engine, collection store) on
a private event-loop thread, the way uvicorn runs it on its loop. Sync tests call it directly;
`async_client()` sends requests from any other event loop to that same loop, so concurrent
requests meet in the same batchers as they would behind uvicorn. No socket is involved.

`serving_in_thread` is for the few callers that need a URL (another program, a real httpx
transport): real uvicorn on 127.0.0.1, on a thread of this process rather than a process of its own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from anyio.from_thread import BlockingPortal
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from focalserve_server.app import create_app
from focalserve_server.config import Settings

BASE_URL = "http://testserver"


class PortalTransport(httpx.AsyncBaseTransport):
    """An async transport that hands each request to the event loop the app's lifespan runs on.

    The app's batchers hold futures of that loop, so its requests must run there too; the caller
    may await from another loop (a pytest-asyncio test's) and may have many requests in flight.
    """

    def __init__(self, app: ASGIApp, portal: BlockingPortal) -> None:
        # a failure inside the app becomes a 500, as a real server answers it
        self._asgi = httpx.ASGITransport(app, raise_app_exceptions=False)
        self._portal = portal

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answered = self._portal.start_task_soon(self._asgi.handle_async_request, request)
        return await asyncio.wrap_future(answered)  # cancelling the caller cancels the request


class InProcessGateway(TestClient):
    """The gateway app over `settings`, answering httpx calls in-process; use it with `with`."""

    def __init__(self, settings: Settings) -> None:
        # a failure inside the app becomes a 500, as a real server answers it, not an exception here
        super().__init__(create_app(settings), base_url=BASE_URL, raise_server_exceptions=False)
        self.settings = settings

    def transport(self) -> PortalTransport:
        """An async transport to this gateway (for `httpx.AsyncClient` or the SDK's `Client`)."""
        if self.portal is None:
            raise RuntimeError("enter the gateway (`with InProcessGateway(...)`) first: its lifespan must run")
        return PortalTransport(self.app, self.portal)

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` whose concurrent requests reach the app concurrently."""
        return httpx.AsyncClient(base_url=BASE_URL, transport=self.transport(), **options)


def gateway_settings(repository: Path, data_dir: Path, **settings: Any) -> Settings:
    """The settings `running_gateway(repository, log, data_dir=..., **settings)` gives a subprocess."""
    return Settings(model_repository=repository, data_dir=data_dir, **settings)


@contextmanager
def serving_in_thread(settings: Settings, startup_timeout_s: float = 60) -> Iterator[str]:
    """The gateway under uvicorn on 127.0.0.1 in a thread of this process; yields its base URL."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, name="gateway", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the gateway failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start within {startup_timeout_s} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True  # uvicorn's graceful shutdown: drain, then the lifespan's end
        thread.join(timeout=30)
        listening.close()
