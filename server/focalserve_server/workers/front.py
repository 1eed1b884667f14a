"""A front process: HTTP, keys, validation, decoding and resizing, tokenizing and the condition
cache for the embed routes; the models run in the engine process, or on Triton.

`/embed` and `/v1/embeddings` are answered here, `/healthz` and `/metrics` (every process's
metrics) too; every other route goes to the engine process unchanged (`proxy`), so the API is
the same whichever process answers it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from focalserve_client.schemas import HealthResponse
from focalserve_family import families_from_configs, read_repository
from focalserve_server.access.control import AccessControl
from focalserve_server.api.deps import EmbedGatewayDep
from focalserve_server.api.routes import embed
from focalserve_server.api.routes import openai as openai_routes
from focalserve_server.api.routes.health import healthz
from focalserve_server.app import create_backend, install_layers
from focalserve_server.backends.base import ModelBackend
from focalserve_server.collections.factory import open_store
from focalserve_server.collections.health import StoreHealth
from focalserve_server.config import Settings
from focalserve_server.engine import Engine
from focalserve_server.errors import BackendUnavailable
from focalserve_server.images import create_image_decoder
from focalserve_server.media.fetch import MediaFetcher
from focalserve_server.metrics import Metrics
from focalserve_server.pixel_slots import PixelSlots
from focalserve_server.state import EmbedGateway
from focalserve_server.workers.engine_client import EngineClient
from focalserve_server.workers.proxy import AWAY, EngineProxy
from focalserve_server.workers.wire import Runtime

LOCAL_PATHS = frozenset({"/embed", "/v1/embeddings", "/healthz", "/metrics"})

probes = APIRouter(tags=["health"])
probes.add_api_route("/healthz", healthz, methods=["GET"], response_model=HealthResponse)


@probes.get("/metrics", response_class=Response)
async def metrics(gateway: EmbedGatewayDep) -> Response:
    """Prometheus exposition of every process's metrics (the engine samples its gauges itself)."""
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class FrontApp:
    """The embed routes here; the rest to the engine process. `/readyz` is this front's too: ready
    only while it reaches the engine for model calls, and the engine says it is ready."""

    def __init__(self, local: FastAPI, proxy: EngineProxy) -> None:
        self._local = local
        self._proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and not await self._reaches_models():
            await self._proxy.unavailable(scope, receive, send, BackendUnavailable(AWAY))
            return
        here = scope["type"] != "http" or scope["path"] in LOCAL_PATHS
        app: ASGIApp = self._local if here else self._proxy
        await app(scope, receive, send)

    async def _reaches_models(self) -> bool:
        gateway: EmbedGateway | None = getattr(self._local.state, "gateway", None)
        return gateway is not None and await gateway.backend.ready()


def create_front_app(settings: Settings, runtime: Runtime, pid: int) -> FrontApp:
    metrics = Metrics()
    proxy = EngineProxy(runtime.http_socket, settings.request_timeout_s + 5, settings.retry_after_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = _front_backend(settings, runtime, pid)
        await backend.start()
        images = create_image_decoder(settings)
        engine = await Engine.load(backend, images, settings, metrics)
        engine.start()
        store = await asyncio.to_thread(open_store, settings, StoreHealth())  # keys and limits: shared
        access = AccessControl(store, settings.admin_key.get_secret_value(), settings.log_poll_interval_s,
                           metrics)
        await access.start()
        media = MediaFetcher(settings, metrics)
        app.state.gateway = EmbedGateway(settings, metrics, backend, engine, access, media)
        try:
            yield
        finally:
            await media.aclose()
            await access.stop()
            store.close()
            await engine.stop()
            images.close()
            await backend.close()
            await proxy.close()

    local = FastAPI(lifespan=lifespan, openapi_url=None)  # the engine serves the one OpenAPI document
    for router in (embed.router, openai_routes.router, probes):
        local.include_router(router)
    install_layers(local, settings, metrics)
    return FrontApp(local, proxy)


def _front_backend(settings: Settings, runtime: Runtime, pid: int) -> ModelBackend:
    """On Triton the fronts call Triton themselves (its scheduler batches across them); otherwise the
    engine process, with this front's pixel region sized for the largest family's images."""
    if settings.backend == "triton":
        return create_backend(settings)
    families = families_from_configs(read_repository(settings.model_repository)).values()
    slot_bytes = max((3 * family.image_size**2 for family in families), default=1)
    slots = PixelSlots(runtime.pixels(pid), slot_bytes, settings.pixel_slots, create=True)
    return EngineClient(runtime.engine_socket, slots, settings.engine_startup_timeout_s)
