"""POST /search: a query against one collection under one condition."""

from __future__ import annotations

from fastapi import APIRouter

from focalserve_client.schemas import SEQ_HEADER, ErrorResponse, SearchRequest, SearchResponse
from focalserve_server.api.deps import GatewayDep, PrincipalDep
from focalserve_server.api.payloads import b64decode
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.errors import check_at

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse,
             responses={status: {"model": ErrorResponse} for status in (404, 413, 422, 503)})
async def search(body: SearchRequest, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """Top-k items of a collection for an image, text or stored item, under one condition."""
    principal.require("read", body.collection)
    query = body.query.model_dump()
    if body.query.image is not None:
        query["image"] = check_at(("query", "image"), b64decode, body.query.image)
    condition, hits = await gateway.collections.search(
        body.collection, body.condition, query, body.k, body.filter, body.min_seq
    )
    response = FastJSONResponse({
        "collection": body.collection,
        "condition": condition.instruction,
        "results": [{"id": hit.id, "score": hit.score, "metadata": hit.metadata} for hit in hits],
    })
    response.headers[SEQ_HEADER] = str(gateway.collections.applied)
    return response
