"""`config.pbtxt`: a family's models as Triton ModelConfig protobufs, written and read here.

Export builds each config from a `ModelSpec` plus the family's metadata; the gateway groups the
configs it finds (files or Triton's model-config endpoint) back into `FamilySpec`s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_family.spec import (
    ROLES,
    DType,
    FamilyMetadata,
    FamilySpec,
    ModelSpec,
    RepositoryError,
    Role,
    TensorSpec,
    model_specs,
)

Backend = Literal["python", "libtorch"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
TRITON_BACKEND_NAME: dict[Backend, str] = {"python": "python", "libtorch": "pytorch"}
# Triton's PyTorch backend runs TorchScript's optimising executor unless told not to; on CUDA that
# re-specialises the graph for every new batch size its dynamic batcher forms (1.2-2.7 s pauses on
# an H200, and no faster steady calls: benchmarks/RESULTS.md, GPU), as the embedded backend found.
BACKEND_PARAMETERS: dict[Backend, dict[str, str]] = {
    "python": {},
    "libtorch": {"DISABLE_OPTIMIZED_EXECUTION": "true"},
}
ROLE_PARAMETER = "role"
TOKENIZER_FILE = "tokenizer.json"  # the family's tokenizer, in its text model's directory (`tokenizers` format)
DTYPES: dict[DType, int] = {"fp32": pb.TYPE_FP32, "int64": pb.TYPE_INT64, "uint8": pb.TYPE_UINT8}


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
    model: ModelSpec, metadata: FamilyMetadata, backend: Backend, batching: BatchingPolicy
) -> pb.ModelConfig:
    config = pb.ModelConfig(name=model.name, backend=TRITON_BACKEND_NAME[backend], max_batch_size=model.max_batch_size)
    config.input.extend(pb.ModelInput(name=t.name, data_type=DTYPES[t.dtype], dims=list(t.dims)) for t in model.inputs)
    config.output.append(
        pb.ModelOutput(name=model.output.name, data_type=DTYPES[model.output.dtype], dims=list(model.output.dims))
    )
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    kind = pb.ModelInstanceGroup.KIND_GPU if backend == "libtorch" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=batching.instances)
    for key, value in {**metadata.to_parameters(), ROLE_PARAMETER: model.role, **BACKEND_PARAMETERS[backend]}.items():
        config.parameters[key].string_value = value
    return config


def to_pbtxt(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str, where: str = "config.pbtxt") -> pb.ModelConfig:
    """Parse with Triton's own schema: an unknown field is an error, not a silent default."""
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{where}: {error}") from error


def read_repository(repository: Path) -> list[pb.ModelConfig]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    return [parse_pbtxt(path.read_text(), str(path)) for path in sorted(repository.glob("*/config.pbtxt"))]


def families_from_configs(configs: Iterable[pb.ModelConfig]) -> dict[str, FamilySpec]:
    """Group configs into families by their `name` parameter; configs of other models are ignored."""
    grouped: dict[str, list[pb.ModelConfig]] = defaultdict(list)
    for config in configs:
        if "family" in config.parameters and ROLE_PARAMETER in config.parameters:
            grouped[config.parameters["name"].string_value].append(config)
    return {name: _family(name, members) for name, members in grouped.items()}


def _family(name: str, configs: list[pb.ModelConfig]) -> FamilySpec:
    parameters = {key: value.string_value for key, value in configs[0].parameters.items()}
    metadata = FamilyMetadata.from_parameters(parameters, f"model {configs[0].name}")
    models = {spec.role: spec for spec in map(_model_spec, configs)}
    missing = [role for role in metadata.roles if role not in models]
    if missing:
        raise RepositoryError(f"family {name!r} lacks its {', '.join(missing)} model(s)")
    expected = model_specs(metadata, 1)
    for role, model in models.items():
        # a repository exported before a contract change (float32 PIXELS) must be exported again,
        # not fed tensors its graphs do not take
        wanted = [(tensor.name, tensor.dtype) for tensor in expected[role].inputs]
        if [(tensor.name, tensor.dtype) for tensor in model.inputs] != wanted:
            raise RepositoryError(f"model {model.name}: inputs are not {wanted}; export the family again")
    return FamilySpec(**vars(metadata), models=models)


def _model_spec(config: pb.ModelConfig) -> ModelSpec:
    role = config.parameters[ROLE_PARAMETER].string_value
    if role not in ROLES:
        raise RepositoryError(f"model {config.name}: unknown role {role!r}")
    return ModelSpec(
        name=config.name,
        role=cast(Role, role),
        inputs=tuple(_tensor(tensor) for tensor in config.input),
        output=_tensor(config.output[0]),
        max_batch_size=config.max_batch_size,
    )


def _tensor(tensor: pb.ModelInput | pb.ModelOutput) -> TensorSpec:
    dtypes = [name for name, value in DTYPES.items() if value == tensor.data_type]
    if not dtypes:
        raise RepositoryError(f"tensor {tensor.name}: data type {tensor.data_type} is not one a family uses")
    return TensorSpec(tensor.name, tuple(tensor.dims), dtypes[0])
