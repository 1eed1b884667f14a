"""GET /models: the loaded families and what a client needs to know about each."""

from __future__ import annotations

from fastapi import APIRouter

from focalserve_client.schemas import ModelsResponse
from focalserve_server.api.deps import GatewayDep
from focalserve_server.api.responses import FastJSONResponse

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse)
async def list_models(gateway: GatewayDep) -> FastJSONResponse:
    """The loaded model families, and where they run."""
    device, dtype = gateway.backend.placement() or (None, None)
    models = [
        {
            "name": spec.name,
            "family": spec.family,
            "open_clip_model": spec.open_clip_model,
            "embedding_dim": spec.embedding_dim,
            "condition_dim": spec.condition_dim,
            "image_size": spec.image_size,
            "context_length": spec.context_length,
            "checkpoint_hash": spec.checkpoint_hash,
            "requires_instruction": spec.conditional,
            "conditioning": spec.conditioning if spec.conditional else None,
            "device": device,
            "dtype": dtype,
        }
        for spec in (family.spec for family in gateway.engine.families.values())
    ]
    return FastJSONResponse({"models": models})
