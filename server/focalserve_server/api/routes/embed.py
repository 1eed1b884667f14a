"""POST /embed: (image, instruction) pairs and texts -> L2-normalised embeddings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from focalserve_client.schemas import EmbedRequest, EmbedResponse, ErrorResponse
from focalserve_server.api.deps import GatewayDep, ReadAccess
from focalserve_server.api.errors import describe_validation_errors
from focalserve_server.api.payloads import b64decode, located
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.conditions import normalise_instruction
from focalserve_server.engine import FamilyEngine
from focalserve_server.errors import FocalServeError, InvalidRequest, TooManyInputs
from focalserve_server.state import Gateway

router = APIRouter(tags=["embed"], dependencies=[ReadAccess])

ERRORS = {status: {"model": ErrorResponse} for status in (404, 413, 422, 503)}
MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary"},
        "instruction": {"type": "string"},
        "model": {"type": "string"},
    },
}


@dataclass
class Item:
    """One input once parsed: image bytes or a text, and the normalised instruction."""

    image: bytes | None
    text: str | None
    instruction: str | None


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/EmbedRequest"}},
                "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            },
        }
    },
)
async def embed(request: Request, gateway: GatewayDep) -> FastJSONResponse:
    """Embed images (under an instruction, for FocalLens families) and texts."""
    model, items = await _parse(request, gateway)
    engine = gateway.engine.family(model)
    vectors = await asyncio.gather(*(_embed_item(gateway, engine, index, item) for index, item in enumerate(items)))
    data = [
        {
            "index": index,
            "embedding": vector,
            "instruction": item.instruction,
            "space": engine.text_space if item.text is not None else engine.space(item.instruction),
        }
        for index, (item, vector) in enumerate(zip(items, vectors))
    ]
    return FastJSONResponse({"model": engine.spec.name, "dim": engine.spec.embedding_dim, "data": data})


async def _parse(request: Request, gateway: Gateway) -> tuple[str | None, list[Item]]:
    limits = gateway.settings
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        model, items = await _parse_multipart(request)
    else:
        model, items = _parse_json(await request.body())
    if len(items) > limits.max_inputs_per_request:
        raise TooManyInputs(f"{len(items)} inputs in one request; the limit is {limits.max_inputs_per_request}")
    for index, item in enumerate(items):
        if item.instruction is not None:
            item.instruction = located(
                f"inputs[{index}]", normalise_instruction, item.instruction, limits.max_instruction_chars
            )
        if item.text is not None:
            item.text = located(
                f"inputs[{index}]", normalise_instruction, item.text, limits.max_instruction_chars, "text"
            )
    return model, items


def _parse_json(body: bytes) -> tuple[str | None, list[Item]]:
    try:
        payload = EmbedRequest.model_validate_json(body)
    except ValidationError as error:
        raise InvalidRequest(describe_validation_errors(error.errors())) from None
    items = [
        Item(
            image=located(f"inputs[{index}]", b64decode, entry.image, "image") if entry.image is not None else None,
            text=entry.text,
            instruction=entry.instruction,
        )
        for index, entry in enumerate(payload.inputs)
    ]
    return payload.model, items


async def _parse_multipart(request: Request) -> tuple[str | None, list[Item]]:
    form = await request.form()
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("multipart requests need an 'image' file field")
    instruction, model = form.get("instruction"), form.get("model")
    if isinstance(instruction, UploadFile) or isinstance(model, UploadFile):
        raise InvalidRequest("'instruction' and 'model' must be text fields")
    return model or None, [Item(image=await upload.read(), text=None, instruction=instruction)]


async def _embed_item(gateway: Gateway, engine: FamilyEngine, index: int, item: Item) -> np.ndarray:
    try:
        if item.text is not None:
            return await engine.embed_text(item.text)
        pixels = await gateway.images.prepare(engine.preprocess, item.image)
        return await engine.embed_image(pixels, item.instruction)
    except FocalServeError as error:
        if error.status < 500:
            error.message = f"inputs[{index}]: {error.message}"
        raise
