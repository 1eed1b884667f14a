"""Export a model family into a Triton model repository (DESIGN.md section 2).

`NAME_image`, `NAME_instruction` (FocalLens only) and `NAME_text`, each a TorchScript
`1/model.pt` plus a `config.pbtxt` whose parameters carry the family's metadata.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn
from tritonclient.grpc import model_config_pb2 as pb

from training.models import Family, FocalLensCLIP
from training.models.factory import state_hash
from training.triton_config import (
    Backend,
    BatchingPolicy,
    FamilyMetadata,
    TensorSpec,
    default_batching,
    model_config,
    to_pbtxt,
)

PYTHON_BACKEND_MODEL = Path(__file__).resolve().parent / "templates" / "model.py"


class ImageEncoder(nn.Module):
    """PIXELS -> L2-normalised EMBEDDING (plain CLIP)."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, PIXELS: torch.Tensor) -> torch.Tensor:  # noqa: N803 (Triton tensor name)
        return self.clip.encode_image(PIXELS, normalize=True)


class ConditionalImageEncoder(nn.Module):
    """(PIXELS, CONDITION) -> L2-normalised conditional EMBEDDING (FocalLens)."""

    def __init__(self, model: FocalLensCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, PIXELS: torch.Tensor, CONDITION: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.model.encode_image(PIXELS, CONDITION)


class InstructionEncoder(nn.Module):
    """TOKENS -> CONDITION (FocalLens instruction tower)."""

    def __init__(self, model: FocalLensCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, TOKENS: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.model.encode_instruction(TOKENS)


class TextEncoder(nn.Module):
    """TOKENS -> L2-normalised EMBEDDING (the answer / query text tower)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, TOKENS: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.model.encode_text(TOKENS, normalize=True)


@dataclass(frozen=True)
class ExportedModel:
    """One Triton model of a family: its role, module and tensor signature."""

    role: str
    module: nn.Module
    inputs: list[TensorSpec]
    output: TensorSpec


def family_metadata(model: nn.Module, family: Family, name: str, model_name: str) -> FamilyMetadata:
    clip = model.clip if isinstance(model, FocalLensCLIP) else model
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    size = preprocess["size"]
    image_size = size if isinstance(size, int) else size[0]
    context_length = int(clip.context_length)
    tokens = open_clip.get_tokenizer(model_name, context_length=context_length)(["probe"])
    with torch.inference_mode():
        embedding_dim = int(clip.encode_text(tokens).shape[-1])
    return FamilyMetadata(
        family=family,
        name=name,
        open_clip_model=model_name,
        image_size=int(image_size),
        image_mean=tuple(preprocess["mean"]),
        image_std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
        tokenizer=model_name,
        context_length=context_length,
        embedding_dim=embedding_dim,
        condition_dim=model.condition_dim if isinstance(model, FocalLensCLIP) else 0,
        checkpoint_hash=state_hash(model),
    )


def family_models(model: nn.Module, metadata: FamilyMetadata) -> list[ExportedModel]:
    """The Triton models a family is served as, with their tensor names and shapes."""
    size, length = metadata.image_size, metadata.context_length
    pixels = TensorSpec("PIXELS", (3, size, size))
    tokens = TensorSpec("TOKENS", (length,), pb.TYPE_INT64)
    embedding = TensorSpec("EMBEDDING", (metadata.embedding_dim,))
    text = ExportedModel("text", TextEncoder(model), [tokens], embedding)
    if isinstance(model, FocalLensCLIP):
        condition = TensorSpec("CONDITION", (metadata.condition_dim,))
        return [
            ExportedModel("image", ConditionalImageEncoder(model), [pixels, condition], embedding),
            ExportedModel("instruction", InstructionEncoder(model), [tokens], condition),
            text,
        ]
    return [ExportedModel("image", ImageEncoder(model), [pixels], embedding), text]


def example_inputs(specs: list[TensorSpec], batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for spec in specs:
        shape = (batch, *spec.dims)
        if spec.dtype == pb.TYPE_INT64:
            examples.append(torch.randint(1, 1000, shape, generator=generator))
        else:
            examples.append(torch.randn(shape, generator=generator))
    return tuple(examples)


def to_torchscript(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """Trace `module`; the one place that picks the serialisation (torch.export could sit here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice is not the user's concern
        with torch.inference_mode(False), torch.no_grad():
            return torch.jit.trace(module.eval(), inputs, check_trace=False)


def export_family(
    model: nn.Module,
    family: Family,
    model_name: str,
    name: str,
    repository: Path,
    backend: Backend = "python",
    batching: BatchingPolicy | None = None,
) -> list[Path]:
    """Write every Triton model of the family; returns the model directories."""
    batching = batching or default_batching(backend)
    model = model.eval()
    metadata = family_metadata(model, family, name, model_name)
    directories = []
    for exported in family_models(model, metadata):
        directory = repository / f"{name}_{exported.role}"
        if directory.exists():
            shutil.rmtree(directory)
        (directory / "1").mkdir(parents=True)
        script = to_torchscript(exported.module, example_inputs(exported.inputs))
        script.save(str(directory / "1" / "model.pt"))
        if backend == "python":
            shutil.copy(PYTHON_BACKEND_MODEL, directory / "1" / "model.py")
        config = model_config(
            directory.name, exported.role, exported.inputs, [exported.output], metadata, backend, batching
        )
        (directory / "config.pbtxt").write_text(to_pbtxt(config))
        directories.append(directory)
    return directories
