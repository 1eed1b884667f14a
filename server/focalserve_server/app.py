"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from focalserve_server.api.errors import install_error_handlers
from focalserve_server.api.middleware import ContainErrors, RecordLatency, RequestLimits
from focalserve_server.api.routes import collections as collection_routes
from focalserve_server.api.routes import embed, health, models, search
from focalserve_server.api.routes import openai as openai_routes
from focalserve_server.api.routes.ui import install_ui
from focalserve_server.backends.base import ModelBackend
from focalserve_server.collections.factory import collection_service, open_store
from focalserve_server.collections.health import StoreHealth
from focalserve_server.config import Settings
from focalserve_server.engine import Engine
from focalserve_server.images import create_image_decoder
from focalserve_server.metrics import Metrics
from focalserve_server.state import Gateway


def create_backend(settings: Settings) -> ModelBackend:
    """The backend `backend` names, its module imported here: a Triton gateway never loads torch."""
    if settings.backend == "embedded":
        from focalserve_server.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_repository, settings.families, settings.torch_threads, settings.device,
                               settings.dtype)
    from focalserve_server.backends.triton import TritonBackend

    return TritonBackend(settings.triton_url, settings.triton_protocol, settings.families, settings.triton_timeout_s,
                         settings.triton_startup_timeout_s, settings.triton_max_inflight)


def create_app(settings: Settings | None = None) -> FastAPI:
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
        collections = collection_service(settings, store, engine)
        await collections.start()
        app.state.gateway = Gateway(settings, metrics, backend, engine, collections)
        try:
            yield
        finally:
            await collections.stop()
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
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, timeout_s=settings.request_timeout_s,
                       retry_after_s=settings.retry_after_s)
    if settings.cors_origins:  # off unless origins are named
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type"])
    for module in (embed, search, collection_routes, models, health, openai_routes):
        app.include_router(module.router)
    install_ui(app)

    def observe_latency(method: str, route: str, status: str, seconds: float) -> None:
        metrics.request_latency.labels(method, route, status).observe(seconds)

    app.add_middleware(RecordLatency, observe=observe_latency)
    app.add_middleware(ContainErrors)  # outermost of ours: whatever escapes the layers inside

    return app
