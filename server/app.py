"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from server.api.errors import install_error_handlers
from server.api.routes import embed, health, models
from server.backends.base import ModelBackend
from server.backends.embedded import EmbeddedBackend
from server.config import Settings
from server.engine import Engine
from server.metrics import Metrics
from server.state import Gateway


def create_backend(settings: Settings) -> ModelBackend:
    if settings.backend == "embedded":
        return EmbeddedBackend(settings.model_repository, settings.families, settings.torch_threads)
    raise NotImplementedError(f"backend {settings.backend!r} is not available yet")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = create_backend(settings)
        await backend.start()
        engine = await Engine.load(backend, settings, metrics)
        engine.start()
        pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="decode")
        app.state.gateway = Gateway(settings, metrics, backend, engine, pool)
        try:
            yield
        finally:
            await engine.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            await backend.close()

    app = FastAPI(
        title="FocalServe",
        version="0.1.0",
        summary="Conditional image embeddings: an image under an instruction.",
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.retry_after_s)
    for module in (embed, models, health):
        app.include_router(module.router)

    @app.middleware("http")
    async def record_latency(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.request_latency.labels(
            request.method, getattr(route, "path", "unmatched"), str(response.status_code)
        ).observe(time.perf_counter() - start)
        return response

    return app
