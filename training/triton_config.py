"""Triton `config.pbtxt` files built from typed objects (Triton's own ModelConfig protobuf).

The `parameters` carry the family metadata the gateway needs (DESIGN.md section 2), so the
gateway reads the same facts from the files or from Triton's model-config endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

Backend = Literal["python", "libtorch"]
BACKENDS: tuple[Backend, ...] = ("python", "libtorch")
TRITON_BACKEND_NAME = {"python": "python", "libtorch": "pytorch"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dimension
    dtype: int = pb.TYPE_FP32


@dataclass(frozen=True)
class FamilyMetadata:
    """What the gateway must know about a family to preprocess, tokenize and label outputs."""

    family: str  # "focallens" | "clip"
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

    def as_parameters(self) -> dict[str, str]:
        values = {k: v for k, v in self.__dict__.items()}
        values["image_mean"] = ",".join(repr(float(x)) for x in self.image_mean)
        values["image_std"] = ",".join(repr(float(x)) for x in self.image_std)
        return {key: str(value) for key, value in values.items()}


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1


def default_batching(backend: Backend, max_batch_size: int = 64) -> BatchingPolicy:
    """CPU (python backend): a short delay, no preferred sizes. GPU (libtorch): preferred sizes
    that keep the GPU busy, and a shorter delay since a GPU batch finishes quickly."""
    if backend == "libtorch":
        preferred = tuple(size for size in (16, 32, 64) if size <= max_batch_size)
        return BatchingPolicy(max_batch_size, max_queue_delay_us=1000, preferred_batch_sizes=preferred)
    return BatchingPolicy(max_batch_size)


def model_config(
    model_name: str,
    role: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    metadata: FamilyMetadata,
    backend: Backend,
    batching: BatchingPolicy,
) -> pb.ModelConfig:
    config = pb.ModelConfig(
        name=model_name, backend=TRITON_BACKEND_NAME[backend], max_batch_size=batching.max_batch_size
    )
    config.input.extend(_tensor(pb.ModelInput, spec) for spec in inputs)
    config.output.extend(_tensor(pb.ModelOutput, spec) for spec in outputs)
    _add_dynamic_batching(config, batching)
    _add_instance_group(config, backend, batching.instances)
    for key, value in {**metadata.as_parameters(), "role": role}.items():
        config.parameters[key].string_value = value
    return config


def _tensor(message_type: type, spec: TensorSpec):  # -> pb.ModelInput | pb.ModelOutput
    return message_type(name=spec.name, data_type=spec.dtype, dims=list(spec.dims))


def _add_dynamic_batching(config: pb.ModelConfig, batching: BatchingPolicy) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)


def _add_instance_group(config: pb.ModelConfig, backend: Backend, count: int) -> None:
    kind = pb.ModelInstanceGroup.KIND_GPU if backend == "libtorch" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=count)


def to_pbtxt(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> pb.ModelConfig:
    """Parse a config.pbtxt with Triton's schema; raises on any unknown field."""
    return text_format.Parse(text, pb.ModelConfig())
