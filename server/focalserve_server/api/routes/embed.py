"""POST /embed: (image, instruction) pairs and texts -> L2-normalised embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from focalserve_client.schemas import EmbedRequest, EmbedResponse, EncodingFormat, ErrorResponse
from focalserve_server.api.deps import embed_gateway
from focalserve_server.api.guard import charge_images, principal_of
from focalserve_server.api.payloads import encoded_vector, image_bytes
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.engine import EmbedInput, Engine
from focalserve_server.errors import InvalidRequest
from focalserve_server.state import EmbedGateway

router = APIRouter(tags=["embed"])  # no dependencies: each costs ~0.1 ms per request (`embed_gateway`)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 404, 413, 422, 429, 503)
}
MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary"},
        "instruction": {"type": "string"},
        "model": {"type": "string"},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    },
}


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
async def embed(request: Request) -> FastJSONResponse:
    """Embed images (under an instruction, for FocalLens families) and texts."""
    gateway = embed_gateway(request)
    principal_of(request).require_some_grant()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        model, items, encoding = await _parse_multipart(request, gateway.engine)
    else:
        model, items, encoding = await _parse_json(request, gateway)
    family, answered = await gateway.engine.embed(model, items, "inputs")
    data = [
        {"index": index, "embedding": encoded_vector(e.vector, encoding), "instruction": e.instruction,
         "space": e.space}
        for index, embeddings in enumerate(answered)
        for e in embeddings
    ]
    return FastJSONResponse({"model": family.spec.name, "dim": family.spec.embedding_dim, "data": data})


async def _parse_json(request: Request, gateway: EmbedGateway) -> tuple[str | None, list[EmbedInput], EncodingFormat]:
    try:
        payload = EmbedRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise InvalidRequest.from_validation(error.errors()) from None
    gateway.engine.check_count(sum(entry.embedding_count for entry in payload.inputs), "inputs")
    sources = [(("inputs", index, "image"), entry.image) for index, entry in enumerate(payload.inputs)
               if entry.image is not None]
    await charge_images(request, len(sources))  # before any URL is fetched
    images = iter(await image_bytes(sources, gateway.media))
    items = [
        EmbedInput(
            image=None if entry.image is None else next(images),
            text=entry.text,
            instruction=entry.instruction,
            instructions=None if entry.instructions is None else tuple(entry.instructions),
        )
        for index, entry in enumerate(payload.inputs)
    ]
    return payload.model, items, payload.encoding_format


async def _parse_multipart(request: Request, engine: Engine) -> tuple[str | None, list[EmbedInput], EncodingFormat]:
    form = await request.form()
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("multipart requests need an 'image' file field", loc=("image",))
    instructions, model, encoding = form.getlist("instruction"), form.get("model"), form.get("encoding_format")
    if any(isinstance(field, UploadFile) for field in (model, encoding, *instructions)):
        raise InvalidRequest("'instruction', 'model' and 'encoding_format' must be text fields")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest("'encoding_format' is 'float' or 'base64'", loc=("encoding_format",))
    chosen: EncodingFormat = "base64" if encoding == "base64" else "float"
    texts = [text for text in instructions if isinstance(text, str)]
    engine.check_count(len(texts), "instruction")
    model_name = model if isinstance(model, str) and model else None
    await charge_images(request, 1)
    if len(texts) > 1:  # the field repeated: one embedding per instruction, as JSON's `instructions`
        return model_name, [EmbedInput(image=await upload.read(), instructions=tuple(texts))], chosen
    return model_name, [EmbedInput(image=await upload.read(), instruction=texts[0] if texts else None)], chosen
