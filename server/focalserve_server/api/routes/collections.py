"""Collections: create, list, delete; items; conditions (docs/design.md section 3)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from focalserve_client.schemas import (
    ITEM_ID_PATTERN,
    NAME_PATTERN,
    SEQ_HEADER,
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    ConditionCreate,
    ConditionInfo,
    ErrorResponse,
    ImageFromURL,
    ItemIn,
    ItemInfo,
    ItemPage,
    ItemsAdd,
    ItemsAdded,
)
from focalserve_server.api.deps import GatewayDep, PrincipalDep
from focalserve_server.api.guard import charge_images
from focalserve_server.api.payloads import image_bytes, sniff_image_type
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.collections.model import Collection, Condition, Item
from focalserve_server.collections.service import CollectionService, ItemUpload
from focalserve_server.errors import Forbidden, InvalidRequest
from focalserve_server.state import Gateway

router = APIRouter(prefix="/collections", tags=["collections"])
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (403, 404, 409, 413, 422, 429, 503, 507)
}
CollectionName = Annotated[str, Path(pattern=NAME_PATTERN)]
ItemId = Annotated[str, Path(pattern=ITEM_ID_PATTERN)]
MULTIPART_ITEM = {
    "type": "object",
    "required": ["id", "image"],
    "properties": {
        "id": {"type": "string"},
        "image": {"type": "string", "format": "binary"},
        "metadata": {"type": "string", "description": "A JSON object."},
    },
}


async def collection_info(service: CollectionService, collection: Collection) -> dict:
    spec = service.family_of(collection).spec
    conditions = await service.conditions(collection.name)
    total = await service.item_count(collection.name)
    return {
        "name": collection.name,
        "model": collection.model,
        "family": spec.family,
        "dim": spec.embedding_dim,
        "items": total,
        "conditions": [await condition_info(service, c, total) for c in conditions],
    }


async def condition_info(service: CollectionService, condition: Condition, total: int) -> dict:
    return {
        "instruction": condition.instruction,
        "index": condition.index_kind,
        "index_options": condition.index_options,
        "index_in_use": _index_in_use(service.index_in_use(condition)),
        "status": condition.status,
        "embedded": await service.embedded(condition),
        "total": total,
        "error": condition.error,
    }


def _index_in_use(described: dict[str, Any] | None) -> dict[str, Any] | None:
    if described is None:
        return None
    shown = ("kind", "factory", "vectors", "tombstones", "built_for", "recall_at_10", "rebuilding")
    return {**{key: described[key] for key in shown},
            "parameters": {key: value for key, value in described.items() if key not in shown}}


def with_seq(response: Response, seq: int) -> Response:
    """Every write answers its change-log position; the SDK sends the newest it saw as `min_seq`."""
    response.headers[SEQ_HEADER] = str(seq)
    return response


@router.post("", status_code=201, response_model=CollectionInfo, responses=ERRORS)
async def create_collection(body: CollectionCreate, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """Create a collection bound to one model family (needs 'admin' on its name)."""
    if not principal.may("admin", body.name):
        raise Forbidden(f"this key may not create collection {body.name!r}: that needs 'admin' on its name")
    service = gateway.collections
    collection, seq = await service.create_collection(body.name, body.model, body.index, body.index_options,
                                                      principal.actor)
    return with_seq(FastJSONResponse(await collection_info(service, collection), status_code=201), seq)


@router.get("", response_model=CollectionList)
async def list_collections(gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """The collections this key may see."""
    service = gateway.collections
    collections = [c for c in await service.list_collections() if principal.may("read", c.name)]
    return FastJSONResponse({"collections": [await collection_info(service, c) for c in collections]})


@router.get("/{name}", response_model=CollectionInfo, responses=ERRORS)
async def get_collection(name: CollectionName, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """One collection: item count, conditions, index types, dimension."""
    principal.require("read", name)
    service = gateway.collections
    return FastJSONResponse(await collection_info(service, await service.collection(name)))


@router.delete("/{name}", status_code=204, responses=ERRORS)
async def delete_collection(name: CollectionName, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """Delete a collection with its items, vectors and indexes (needs 'admin' on it)."""
    principal.require("admin", name)
    seq = await gateway.collections.delete_collection(name, principal.actor)
    return with_seq(Response(status_code=204), seq)


@router.post(
    "/{name}/items",
    status_code=201,
    response_model=ItemsAdded,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ItemsAdd"}},
                "multipart/form-data": {"schema": MULTIPART_ITEM},
            },
        }
    },
)
async def add_items(name: CollectionName, request: Request, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """Add (or replace) items; acknowledged only once committed and embedded under every ready condition."""
    principal.require("write", name)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        uploads = [await _multipart_item(request)]
    else:
        uploads = await _json_items(request, gateway)
    added, seq = await gateway.collections.add_items(name, uploads, principal.actor)
    return with_seq(FastJSONResponse({"added": added}, status_code=201), seq)


async def _json_items(request: Request, gateway: Gateway) -> list[ItemUpload]:
    try:
        payload = ItemsAdd.model_validate_json(await request.body())
    except ValidationError as error:
        raise InvalidRequest.from_validation(error.errors()) from None
    gateway.engine.check_count(len(payload.items), "items")
    if len({item.id for item in payload.items}) != len(payload.items):
        raise InvalidRequest("an item id appears twice in one request", loc=("items",))
    await charge_images(request, len(payload.items))  # before any URL is fetched
    images = await image_bytes([(("items", i, "image"), item.image) for i, item in enumerate(payload.items)],
                               gateway.media)
    return [ItemUpload(item.id, image, item.metadata, _source(item.image))
            for item, image in zip(payload.items, images, strict=True)]


def _source(image: str | ImageFromURL) -> str | None:
    """Where an image sent by URL came from (a data: URL is the image itself: no source)."""
    if isinstance(image, ImageFromURL) and not image.url.startswith("data:"):
        return image.url
    return None


async def _multipart_item(request: Request) -> ItemUpload:
    form = await request.form()
    upload, metadata = form.get("image"), form.get("metadata") or "{}"
    if not isinstance(upload, UploadFile) or isinstance(metadata, UploadFile):
        raise InvalidRequest("multipart items need an 'image' file field, an 'id' and optional JSON 'metadata'")
    try:
        item = ItemIn(id=str(form.get("id") or ""), image="", metadata=json.loads(metadata))
    except ValidationError as error:
        raise InvalidRequest.from_validation(error.errors()) from None
    except ValueError as error:
        raise InvalidRequest(f"not a JSON object: {error}", loc=("metadata",)) from None
    await charge_images(request, 1)
    return ItemUpload(item.id, await upload.read(), item.metadata)


@router.get("/{name}/items", response_model=ItemPage, responses=ERRORS)
async def list_items(
    name: CollectionName, gateway: GatewayDep, principal: PrincipalDep, after: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FastJSONResponse:
    """Items in insertion order, a page at a time (`after` = the previous page's `next_after`)."""
    principal.require("read", name)
    after_rowid = int(after) if after.isdigit() else 0
    items = await gateway.collections.list_items(name, after_rowid, limit)
    return FastJSONResponse(
        {
            "items": [_item_info(i) for i in items],
            "next_after": str(items[-1].rowid) if len(items) == limit else None,
        }
    )


@router.get("/{name}/items/{item_id:path}/image", responses=ERRORS)
async def get_item_image(name: CollectionName, item_id: str, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """The stored image bytes of an item."""
    principal.require("read", name)
    data = await gateway.collections.read_image(name, _checked_id(item_id))
    return Response(data, media_type=sniff_image_type(data), headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{name}/items/{item_id:path}", response_model=ItemInfo, responses=ERRORS)
async def get_item(
    name: CollectionName, item_id: str, gateway: GatewayDep, principal: PrincipalDep
) -> FastJSONResponse:
    """One item's metadata and image hash."""
    principal.require("read", name)
    item = await gateway.collections.item(name, _checked_id(item_id))
    return FastJSONResponse(_item_info(item))


def _item_info(item: Item) -> dict[str, Any]:
    return {"id": item.id, "metadata": item.metadata, "image_sha256": item.blob, "source": item.source,
            "image_kept": item.kept}


@router.delete("/{name}/items/{item_id:path}", status_code=204, responses=ERRORS)
async def delete_item(name: CollectionName, item_id: str, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """Delete an item from the collection and from every condition's index."""
    principal.require("write", name)
    seq = await gateway.collections.delete_item(name, _checked_id(item_id), principal.actor)
    return with_seq(Response(status_code=204), seq)


def _checked_id(item_id: str) -> str:
    """Ids may hold '/', so routes take the rest of the path; the pattern still applies."""
    try:
        return ItemIn(id=item_id, image="").id
    except ValidationError:
        raise InvalidRequest(
            f"invalid item id {item_id[:80]!r}: letters, digits and ._:@/+- only", loc=("path", "item_id")
        ) from None


@router.post(
    "/{name}/conditions", status_code=202,
    response_model=ConditionInfo | list[ConditionInfo], responses=ERRORS,
)
async def add_condition(
    name: CollectionName, body: ConditionCreate, gateway: GatewayDep, principal: PrincipalDep
) -> Response:
    """Register an instruction (or, with `instructions`, several at once: a list answers): every
    item is embedded under it and indexed in the background. 202 if any was new, 200 if none."""
    principal.require("write", name)
    service = gateway.collections
    if body.instructions is not None:
        texts, field = body.instructions, ("instructions",)
    else:
        assert body.instruction is not None  # ConditionCreate holds one form or the other
        texts, field = [body.instruction], ("instruction",)
    registered, seq = await service.add_conditions(name, texts, body.index, body.index_options, field,
                                                   principal.actor)
    total = await service.item_count(name)
    infos = [await condition_info(service, condition, total) for condition, _ in registered]
    status = 202 if any(created for _, created in registered) else 200
    return with_seq(FastJSONResponse(infos if body.instructions is not None else infos[0], status_code=status), seq)


@router.get("/{name}/conditions", response_model=list[ConditionInfo], responses=ERRORS)
async def list_conditions(name: CollectionName, gateway: GatewayDep, principal: PrincipalDep) -> FastJSONResponse:
    """Registered conditions with their build progress."""
    principal.require("read", name)
    service = gateway.collections
    conditions = await service.conditions(name)
    total = await service.item_count(name)
    return FastJSONResponse([await condition_info(service, c, total) for c in conditions])
