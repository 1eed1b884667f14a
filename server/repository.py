"""Reading model families out of Triton model configs (DESIGN.md section 2).

The same parser serves configs read from `config.pbtxt` files (embedded backend) and configs
fetched from Triton, so the gateway has one source of truth for tensor names and metadata.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

ROLES = ("image", "instruction", "text")


class RepositoryError(Exception):
    """The model repository is missing or does not hold a complete family."""


@dataclass(frozen=True)
class ModelSpec:
    """One Triton model of a family: its name, tensor names and batch limit."""

    name: str
    role: str
    inputs: tuple[str, ...]
    output: str
    max_batch_size: int


@dataclass(frozen=True)
class FamilySpec:
    name: str
    family: str
    open_clip_model: str
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    tokenizer: str
    context_length: int
    embedding_dim: int
    condition_dim: int
    checkpoint_hash: str
    models: dict[str, ModelSpec]

    @property
    def conditional(self) -> bool:
        return self.family == "focallens"


def read_config_file(path: Path) -> pb.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{path}: {error}") from error


def read_repository(repository: Path) -> list[pb.ModelConfig]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    return [read_config_file(path) for path in sorted(repository.glob("*/config.pbtxt"))]


def families_from_configs(configs: Iterable[pb.ModelConfig]) -> dict[str, FamilySpec]:
    """Group model configs into families by their `name` parameter; configs of other models are ignored."""
    grouped: dict[str, list[pb.ModelConfig]] = defaultdict(list)
    for config in configs:
        if "family" in config.parameters and "role" in config.parameters:
            grouped[_param(config, "name")].append(config)
    return {name: _family(name, members) for name, members in grouped.items()}


def _param(config: pb.ModelConfig, key: str) -> str:
    if key not in config.parameters:
        raise RepositoryError(f"model {config.name}: parameter {key!r} missing")
    return config.parameters[key].string_value


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def _family(name: str, configs: list[pb.ModelConfig]) -> FamilySpec:
    models = {
        _param(c, "role"): ModelSpec(
            name=c.name,
            role=_param(c, "role"),
            inputs=tuple(tensor.name for tensor in c.input),
            output=c.output[0].name,
            max_batch_size=c.max_batch_size,
        )
        for c in configs
    }
    first = configs[0]
    family = _param(first, "family")
    needed = ("image", "instruction", "text") if family == "focallens" else ("image", "text")
    missing = [role for role in needed if role not in models]
    if missing:
        raise RepositoryError(f"family {name!r} lacks its {', '.join(missing)} model(s)")
    return FamilySpec(
        name=name,
        family=family,
        open_clip_model=_param(first, "open_clip_model"),
        image_size=int(_param(first, "image_size")),
        image_mean=_floats(_param(first, "image_mean")),
        image_std=_floats(_param(first, "image_std")),
        interpolation=_param(first, "interpolation"),
        resize_mode=_param(first, "resize_mode"),
        tokenizer=_param(first, "tokenizer"),
        context_length=int(_param(first, "context_length")),
        embedding_dim=int(_param(first, "embedding_dim")),
        condition_dim=int(_param(first, "condition_dim")),
        checkpoint_hash=_param(first, "checkpoint_hash"),
        models=models,
    )
