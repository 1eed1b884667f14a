"""Keys, their grants and the audit trail: for keys with 'admin' on '*' (README: Security)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from focalserve_client.schemas import AuditPage, ErrorResponse, KeyCreate, KeyGrants, KeyInfo, KeyIssued, KeyList
from focalserve_server.access import admin
from focalserve_server.api.deps import GatewayDep, PrincipalDep
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.state import Gateway

router = APIRouter(prefix="/admin", tags=["admin"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (401, 403, 404, 422)}
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


async def _changed(gateway: Gateway) -> None:
    """This gateway sees its own change at once (the others at their next poll)."""
    await gateway.access.registry.refresh()


@router.post("/keys", status_code=201, response_model=KeyIssued, responses=ERRORS)
async def create_key(body: KeyCreate, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """Make a key; the answer holds the whole key, shown this once."""
    principal.require_key_admin()
    issued = await asyncio.to_thread(admin.create_key, gateway.access.store, body, principal.actor)
    await _changed(gateway)
    return FastJSONResponse(issued, status_code=201)


@router.get("/keys", response_model=KeyList, responses=ERRORS)
async def list_keys(gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """Every key, revoked ones too: prefix, grants, limits, when made and last used."""
    principal.require_key_admin()
    keys = await asyncio.to_thread(gateway.access.store.keys)
    return FastJSONResponse({"keys": [admin.describe(key) for key in keys]})


@router.post("/keys/{key_id}/rotate", response_model=KeyIssued, responses=ERRORS)
async def rotate_key(key_id: KeyId, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """A new secret for the key, same id and grants; the old secret stops working."""
    principal.require_key_admin()
    rotated = await asyncio.to_thread(admin.rotate_key, gateway.access.store, key_id, principal.actor)
    await _changed(gateway)
    return FastJSONResponse(rotated)


@router.put("/keys/{key_id}/grants", response_model=KeyInfo, responses=ERRORS)
async def set_grants(key_id: KeyId, body: KeyGrants, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """Replace the key's grants."""
    principal.require_key_admin()
    described = await asyncio.to_thread(admin.set_grants, gateway.access.store, key_id, body.grants, principal.actor)
    await _changed(gateway)
    return FastJSONResponse(described)


@router.delete("/keys/{key_id}", status_code=204, responses=ERRORS)
async def revoke_key(key_id: KeyId, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """Revoke the key: every gateway refuses it from its next poll of the store."""
    principal.require_key_admin()
    await asyncio.to_thread(admin.revoke_key, gateway.access.store, key_id, principal.actor)
    await _changed(gateway)
    return Response(status_code=204)


@router.get("/audit", response_model=AuditPage, responses=ERRORS)
async def audit_trail(
    gateway: GatewayDep, principal: PrincipalDep, after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FastJSONResponse:
    """Writes, deletes, grants and key changes, oldest first, a page at a time."""
    principal.require_key_admin()
    records = await asyncio.to_thread(gateway.access.store.audit_trail, after, limit)
    return FastJSONResponse({"entries": [admin.audit_entry(record) for record in records],
                             "next_after": records[-1].seq if len(records) == limit else None})
