"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from focalserve_server.access.control import AccessControl
from focalserve_server.api.errors import install_error_handlers
from focalserve_server.api.guard import AccessGuard
from focalserve_server.api.middleware import ContainErrors, RecordLatency, RequestLimits
from focalserve_server.api.routes import admin, embed, health, models, search
from focalserve_server.api.routes import collections as collection_routes
from focalserve_server.api.routes import openai as openai_routes
from focalserve_server.api.routes.ui import install_ui
from focalserve_server.backends.base import ModelBackend
from focalserve_server.collections.factory import collection_service, open_store
from focalserve_server.collections.health import StoreHealth
from focalserve_server.config import Settings
from focalserve_server.engine import Engine
from focalserve_server.images import create_image_decoder
from focalserve_server.media.fetch import MediaFetcher
from focalserve_server.metrics import Metrics
from focalserve_server.state import Gateway

GAUGE_REFRESH_S = 1.0  # how often the engine process samples its gauges for the fronts' /metrics


def create_backend(settings: Settings) -> ModelBackend:
    """The backend `backend` names, its module imported here: a Triton gateway never loads torch."""
    if settings.backend == "embedded":
        from focalserve_server.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_repository, settings.families, settings.torch_threads, settings.device,
                               settings.dtype)
    from focalserve_server.backends.triton import TritonBackend

    return TritonBackend(settings.triton_url, settings.triton_protocol, settings.families, settings.triton_timeout_s,
                         settings.triton_startup_timeout_s, settings.triton_max_inflight,
                         settings.pixel_slots if settings.triton_shared_memory else 0)


def create_app(settings: Settings | None = None, engine_socket: Path | None = None) -> FastAPI:
    """The gateway. With `engine_socket` it is the engine process behind `--workers N` fronts: it also
    answers their model calls there and samples its gauges for their `/metrics`."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = create_backend(settings)
        await backend.start()
        images = create_image_decoder(settings)
        engine = await Engine.load(backend, images, settings, metrics)
        if settings.warmup:
            await engine.warm_up(lambda model, seconds: metrics.warmup_seconds.labels(model).set(seconds))
        engine.start()
        health = StoreHealth(on_error=lambda code: metrics.store_errors.labels(code).inc())
        store = await asyncio.to_thread(open_store, settings, health)
        access = AccessControl(store, settings.admin_key.get_secret_value(), settings.log_poll_interval_s,
                           metrics)
        await access.start()
        collections = collection_service(settings, store, engine)
        await collections.start()
        media = MediaFetcher(settings, metrics)
        gateway = app.state.gateway = Gateway(settings, metrics, backend, engine, access, media, collections)
        try:
            if engine_socket is None:
                yield
            else:
                async with _serving_fronts(gateway, engine_socket):
                    yield
        finally:
            await media.aclose()
            await collections.stop()
            await access.stop()
            await engine.stop()
            images.close()
            store.close()
            await backend.close()

    app = FastAPI(
        title="FocalServe",
        version="0.1.0",
        summary="Conditional image embeddings: an image under an instruction.",
        lifespan=lifespan,
    )
    for module in (embed, search, collection_routes, models, health, openai_routes, admin):
        app.include_router(module.router)
    install_ui(app)
    declare_bearer_keys(app)
    install_layers(app, settings, metrics)
    return app


def declare_bearer_keys(app: FastAPI) -> None:
    """The schema says how keys are sent; `AccessGuard` checks them before any route, so no route declares
    them. `{}` beside the scheme: a gateway without keys takes requests without one."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # made once, then FastAPI's cached copy
        schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "A key from `focalserve keys create` or POST /admin/keys, or FOCALSERVE_ADMIN_KEY",
        }}
        schema["security"] = [{"apiKey": []}, {}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_layers(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """What every request passes through, in one process or a front: error rendering, the body
    limit and deadline, keys and their limits, CORS, latency metrics, and the last line for
    unexpected errors."""
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, timeout_s=settings.request_timeout_s,
                       retry_after_s=settings.retry_after_s)
    app.add_middleware(AccessGuard, retry_after_s=settings.retry_after_s)  # outside: a refused request costs no body
    if settings.cors_origins:  # off unless origins are named
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type"])

    def observe_latency(method: str, route: str, status: str, seconds: float) -> None:
        metrics.request_latency.labels(method, route, status).observe(seconds)

    app.add_middleware(RecordLatency, observe=observe_latency)
    app.add_middleware(ContainErrors)  # outermost of ours: whatever escapes the layers inside


@asynccontextmanager
async def _serving_fronts(gateway: Gateway, engine_socket: Path) -> AsyncIterator[None]:
    from focalserve_server.workers.engine_server import EngineServer

    server = EngineServer(gateway.engine, await gateway.backend.model_configs(), engine_socket)
    await server.start()
    sampling = asyncio.create_task(_sample_gauges(lambda: health.refresh_gauges(gateway)))
    try:
        yield
    finally:
        sampling.cancel()
        await server.stop()


async def _sample_gauges(refresh: Callable[[], Awaitable[None]]) -> None:
    while True:
        await refresh()
        await asyncio.sleep(GAUGE_REFRESH_S)
