"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from focalserve_client.schemas import HealthResponse
from focalserve_server.api.deps import GatewayDep
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.collections.health import PARTS
from focalserve_server.state import Gateway

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> FastJSONResponse:
    """The process is alive."""
    return FastJSONResponse({"status": "ok", "detail": {}})


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def readyz(gateway: GatewayDep) -> FastJSONResponse:
    """Models loaded, backend reachable, every batcher running and making progress, the log caught up.

    A full disk or a lost database is reported in `detail` without failing readiness: every replica
    shares them, and a load balancer with no ready replica refuses connections instead of passing on
    the gateway's 507 / 503 answers, which say what is wrong and when to retry."""
    detail = {}
    if not await gateway.backend.ready():
        detail["backend"] = f"{gateway.backend.name} backend not ready"
    if not gateway.engine.families:
        detail["models"] = "no model family loaded"
    if not gateway.collections.caught_up:
        detail["collections"] = f"catching up with the change log (applied {gateway.collections.applied})"
    # shared by every replica: taking them all out of rotation would only turn 503s into refusals
    degraded: dict[str, str] = {}
    for part, failure in (await gateway.collections.failing(probe=True)).items():
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failure.since))
        degraded[part] = (f"{'writes' if part == 'storage' else 'calls'} failing since {since} ({failure.errors} "
                          f"errors): {failure.message}; this replica has applied the change log up to "
                          f"{gateway.collections.applied}")
    if gateway.collections.rebuilt_from_store:  # told, not failing: the indexes are whole again
        degraded["log"] = gateway.collections.rebuilt_from_store
    for family in gateway.engine.families.values():
        for batcher in family.batchers.values():
            if not batcher.running:
                detail[batcher.name] = "batcher stopped"
            elif batcher.stalled(gateway.settings.stall_timeout_s):
                detail[batcher.name] = f"no progress for over {gateway.settings.stall_timeout_s:g} s"
    status = 503 if detail else 200
    return FastJSONResponse({"status": "not_ready" if detail else "ok", "detail": {**detail, **degraded}},
                            status_code=status)


@router.get("/metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus exposition of the gateway's metrics."""
    await refresh_gauges(gateway)
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def refresh_gauges(gateway: Gateway) -> None:
    """Set the gauges that sample state (queue depths, failing parts) to what it is now."""
    for family in gateway.engine.families.values():
        for batcher in family.batchers.values():
            gateway.metrics.queue_depth.labels(batcher.name).set(batcher.queue_depth)
    failing = await gateway.collections.failing(probe=False)
    for part in PARTS:
        gateway.metrics.store_failing.labels(part).set(1 if part in failing else 0)
