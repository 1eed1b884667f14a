"""Request and response schemas of the FocalServe HTTP API.

They live in the client package and the server imports them, so the two never disagree
(DESIGN.md section 1). Limits that depend on the server's settings (input count,
instruction length, image size) are enforced by the server, which reports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedInput(_Schema):
    """One input: an image (optionally under an instruction), or a text."""

    image: str | None = Field(default=None, description="Base64-encoded image bytes (PNG, JPEG, ...).")
    instruction: str | None = Field(
        default=None, description="The condition, e.g. 'what colour is the car?'. FocalLens families only."
    )
    text: str | None = Field(default=None, description="A text to embed (the query side of search).")

    @model_validator(mode="after")
    def _one_kind(self) -> EmbedInput:
        if (self.image is None) == (self.text is None):
            raise ValueError("each input needs exactly one of 'image' or 'text'")
        if self.text is not None and self.instruction is not None:
            raise ValueError("'instruction' conditions an image; a text input takes none")
        return self


class EmbedRequest(_Schema):
    model: str | None = Field(default=None, description="Model family; optional when one is loaded.")
    inputs: list[EmbedInput] = Field(min_length=1)


class Embedding(_Schema):
    index: int
    embedding: list[float]
    instruction: str | None = Field(description="The instruction as normalised by the server.")
    space: str = Field(
        description="family:checkpoint-hash:instruction-hash; only vectors of one space are comparable "
        "(text embeddings carry 'text' and are comparable with every image space of their family)."
    )


class EmbedResponse(_Schema):
    model: str
    dim: int
    data: list[Embedding]


class ModelInfo(_Schema):
    name: str
    family: Literal["focallens", "clip"]
    open_clip_model: str
    embedding_dim: int
    condition_dim: int
    image_size: int
    context_length: int
    checkpoint_hash: str
    requires_instruction: bool


class ModelsResponse(_Schema):
    models: list[ModelInfo]


class HealthResponse(_Schema):
    status: Literal["ok", "not_ready"]
    detail: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(_Schema):
    code: str
    message: str


class ErrorResponse(_Schema):
    error: ErrorDetail
