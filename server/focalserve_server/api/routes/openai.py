"""POST /v1/embeddings: OpenAI's embeddings API, plus the `messages` form vLLM uses for
instruction-conditioned multimodal embedders (one image under one instruction).

The request and response shapes are OpenAI's, not ours, so they are declared here rather than
in the shared schema module; errors keep the gateway's `{"error": {...}}` body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from focalserve_client.schemas import ErrorResponse
from focalserve_server.api.deps import embed_gateway
from focalserve_server.api.guard import charge_images, principal_of
from focalserve_server.api.payloads import encoded_vector
from focalserve_server.api.responses import FastJSONResponse
from focalserve_server.engine import EmbedInput
from focalserve_server.errors import InvalidRequest, await_at

router = APIRouter(prefix="/v1", tags=["openai"])  # no dependencies (`embed_gateway`)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 404, 413, 422, 429, 503)
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(description="A data URL (data:image/png;base64,...), or an http(s) URL on a host the gateway "
                                 "allows (`allowed_media_domains`, none by default).")
    detail: str | None = Field(default=None, description="Accepted for compatibility; ignored.")


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class EmbeddingMessage(_Strict):
    role: Literal["system", "user"]
    content: str | list[Annotated[ImagePart | TextPart, Field(discriminator="type")]]


class OpenAIEmbeddingRequest(_Strict):
    model: str | None = Field(
        default=None, description="Model family; optional when one is loaded."
    )
    input: str | list[str] | None = Field(default=None, description="Text(s) to embed.")
    messages: list[EmbeddingMessage] | None = Field(
        default=None,
        description="One image part (a data: or allowed http(s) URL) and, for FocalLens families, one text part: the "
        "instruction. A text part alone embeds that text.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: the little-endian float32 bytes of each vector."
    )
    dimensions: int | None = Field(
        default=None, description="Must equal the model's dimension if given."
    )
    user: str | None = Field(default=None, description="Accepted for compatibility; ignored.")

    @model_validator(mode="before")
    @classmethod
    def _no_token_ids(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("input"), list):
            if any(isinstance(entry, (int, list)) for entry in data["input"]):
                raise ValueError("token ids are not supported as 'input': send strings")
        return data

    @model_validator(mode="after")
    def _one_form(self) -> OpenAIEmbeddingRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError(
                "send exactly one of 'input' (texts) or 'messages' (an image and its instruction)"
            )
        if self.input is not None and not self.input:
            raise ValueError("'input' holds no text")
        return self


class OpenAIEmbedding(_Strict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class OpenAIUsage(_Strict):
    prompt_tokens: int = Field(
        description="Tokens of the texts and instructions; images count none."
    )
    total_tokens: int


class OpenAIEmbeddingResponse(_Strict):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


@router.post("/embeddings", response_model=OpenAIEmbeddingResponse, responses=ERRORS)
async def create_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> FastJSONResponse:
    """OpenAI-compatible embeddings of texts (`input`) or of an image under an instruction."""
    gateway = embed_gateway(request)
    principal_of(request).require_some_grant()
    family = gateway.engine.family(body.model)
    if body.dimensions is not None and body.dimensions != family.spec.embedding_dim:
        raise InvalidRequest(
            f"'dimensions' is {body.dimensions}; model {family.spec.name} embeds in {family.spec.embedding_dim}",
            loc=("dimensions",),
        )
    if body.messages is not None:
        field, items = "messages", [await _message_input(body.messages, request)]
    else:
        texts = [body.input] if isinstance(body.input, str) else body.input or []
        gateway.engine.check_count(len(texts), "input")
        field, items = "input", [EmbedInput(text=text) for text in texts]
    embeddings = [embedding for answered in await family.embed_all(items, field) for embedding in answered]
    data = [
        {"object": "embedding", "index": index, "embedding": encoded_vector(e.vector, body.encoding_format)}
        for index, e in enumerate(embeddings)
    ]
    tokens = sum(family.token_count(text) for item in items for text in (item.text, item.instruction) if text)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return FastJSONResponse({"object": "list", "data": data, "model": family.spec.name, "usage": usage})


async def _message_input(messages: list[EmbeddingMessage], request: Request) -> EmbedInput:
    """The one image (and its instruction) or the one text that `messages` may carry."""
    images, texts = _parts(messages)
    if len(images) > 1 or len(texts) > 1:
        raise InvalidRequest(
            "'messages' may hold one image part and one text part (the instruction); "
            f"got {len(images)} images and {len(texts)} texts",
            loc=("messages",),
        )
    if not images and not texts:
        raise InvalidRequest("'messages' holds no image and no text", loc=("messages",))
    if not images:
        return EmbedInput(text=texts[0])
    await charge_images(request, 1)  # before the URL is fetched
    image = await await_at(("messages", "image_url"), embed_gateway(request).media.fetch(images[0]))
    return EmbedInput(image=image, instruction=texts[0] if texts else None)


def _parts(messages: list[EmbeddingMessage]) -> tuple[list[str], list[str]]:
    """(image URLs, texts) in message order."""
    images, texts = [], []
    for message in messages:
        content = (
            [TextPart(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        for part in content:
            if isinstance(part, ImagePart):
                images.append(part.image_url.url)
            else:
                texts.append(part.text)
    return images, texts

