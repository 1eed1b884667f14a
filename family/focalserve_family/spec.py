"""What a model family is: its kind, its metadata, and the Triton model of each role."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

FamilyKind = Literal["focallens", "clip"]
FAMILY_KINDS: tuple[FamilyKind, ...] = get_args(FamilyKind)
CONDITIONAL_FAMILY: FamilyKind = "focallens"  # the kind whose images need an instruction
# How a FocalLens condition enters the image tower. `full`: the condition token takes part in every
# layer (one ViT forward per image and condition); `readout`: the trunk runs once per image and a
# light readout stream per condition reads it.
Conditioning = Literal["full", "readout"]
CONDITIONINGS: tuple[Conditioning, ...] = get_args(Conditioning)

Role = Literal["image", "instruction", "text"]
ROLES: tuple[Role, ...] = get_args(Role)

DType = Literal["fp32", "int64", "uint8"]


class RepositoryError(Exception):
    """The model repository is missing, unreadable, or does not hold a complete family."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dimension
    dtype: DType = "fp32"


@dataclass(frozen=True)
class FamilyMetadata:
    """What the gateway must know to preprocess, tokenize and label a family's outputs.

    Stored as string `parameters` of every model config of the family, so the gateway reads the
    same facts from `config.pbtxt` files or from Triton's model-config endpoint.
    """

    family: FamilyKind
    name: str
    open_clip_model: str
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    tokenizer: str
    context_length: int
    embedding_dim: int
    condition_dim: int  # 0 for plain CLIP families
    checkpoint_hash: str
    # readout families take several conditions per image in one row; repositories exported before
    # readout conditioning existed name none, and are `full`
    conditioning: Conditioning = "full"

    @property
    def conditional(self) -> bool:
        """Whether each image is embedded under an instruction."""
        return self.family == CONDITIONAL_FAMILY

    @property
    def roles(self) -> tuple[Role, ...]:
        return ROLES if self.conditional else ("image", "text")

    def to_parameters(self) -> dict[str, str]:
        return {field.name: _encode(getattr(self, field.name)) for field in dataclasses.fields(FamilyMetadata)}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], where: str) -> FamilyMetadata:
        values: dict[str, object] = {}
        for field in dataclasses.fields(FamilyMetadata):
            if field.name not in parameters:
                if field.default is not dataclasses.MISSING:
                    continue
                raise RepositoryError(f"{where}: parameter {field.name!r} missing")
            values[field.name] = _decode(parameters[field.name], field.type)
        if values["family"] not in FAMILY_KINDS:
            raise RepositoryError(f"{where}: unknown family kind {values['family']!r}")
        if values.get("conditioning", "full") not in CONDITIONINGS:
            raise RepositoryError(f"{where}: unknown conditioning {values['conditioning']!r}")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """One Triton model of a family: its name, role, tensors and batch limit."""

    name: str
    role: Role
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    max_batch_size: int

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.inputs)


@dataclass(frozen=True)
class FamilySpec(FamilyMetadata):
    """A family as served: its metadata and the Triton model of each of its roles."""

    models: Mapping[Role, ModelSpec] = dataclasses.field(kw_only=True)


def model_name(family: str, role: Role) -> str:
    return f"{family}_{role}"


def model_specs(metadata: FamilyMetadata, max_batch_size: int) -> dict[Role, ModelSpec]:
    """The tensors of each role (docs/design.md section 2): the one place that names them.

    A readout family's image model takes each image with any number of conditions (the row's
    CONDITION is (K, C), its EMBEDDING (K, D)): the trunk runs once for all of them.
    """
    # uint8 RGB as decoded and resized: the image model normalises on its own device, so every
    # hand-over of pixels (front to engine, gateway to Triton) moves a quarter of float32's bytes
    pixels = TensorSpec("PIXELS", (3, metadata.image_size, metadata.image_size), "uint8")
    tokens = TensorSpec("TOKENS", (metadata.context_length,), "int64")
    embedding = TensorSpec("EMBEDDING", (metadata.embedding_dim,))
    condition = TensorSpec("CONDITION", (metadata.condition_dim,))
    image: tuple[tuple[TensorSpec, ...], TensorSpec] = ((pixels,), embedding)
    if metadata.conditional and metadata.conditioning == "readout":
        image = ((pixels, TensorSpec("CONDITION", (-1, metadata.condition_dim))),
                 TensorSpec("EMBEDDING", (-1, metadata.embedding_dim)))
    elif metadata.conditional:
        image = ((pixels, condition), embedding)
    signatures: dict[Role, tuple[tuple[TensorSpec, ...], TensorSpec]] = {
        "image": image,
        "instruction": ((tokens,), condition),
        "text": ((tokens,), embedding),
    }
    return {
        role: ModelSpec(model_name(metadata.name, role), role, *signatures[role], max_batch_size)
        for role in metadata.roles
    }


def _encode(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(repr(float(item)) for item in value)
    return str(value)


def _decode(text: str, annotation: object) -> object:
    kind = str(annotation)
    if kind == "int":
        return int(text)
    if kind.startswith("tuple[float"):
        return tuple(float(item) for item in text.split(","))
    return text
