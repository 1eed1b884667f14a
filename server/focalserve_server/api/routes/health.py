"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from focalserve_client.schemas import HealthResponse
from focalserve_server.api.deps import GatewayDep, ReadAccess
from focalserve_server.api.responses import FastJSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> FastJSONResponse:
    """The process is alive."""
    return FastJSONResponse({"status": "ok", "detail": {}})


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def readyz(gateway: GatewayDep) -> FastJSONResponse:
    """Models loaded, backend reachable, every batcher running and making progress."""
    detail = {}
    if not await gateway.backend.ready():
        detail["backend"] = f"{gateway.backend.name} backend not ready"
    if not gateway.engine.families:
        detail["models"] = "no model family loaded"
    if not gateway.collections.caught_up:
        detail["collections"] = f"catching up with the change log (applied {gateway.collections.applied})"
    for family in gateway.engine.families.values():
        for batcher in family.batchers.values():
            if not batcher.running:
                detail[batcher.name] = "batcher stopped"
            elif batcher.stalled(gateway.settings.stall_timeout_s):
                detail[batcher.name] = f"no progress for over {gateway.settings.stall_timeout_s:g} s"
    status = 503 if detail else 200
    return FastJSONResponse({"status": "not_ready" if detail else "ok", "detail": detail}, status_code=status)


@router.get("/metrics", response_class=Response, dependencies=[ReadAccess])
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus exposition of the gateway's metrics."""
    for family in gateway.engine.families.values():
        for batcher in family.batchers.values():
            gateway.metrics.queue_depth.labels(batcher.name).set(batcher.queue_depth)
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
