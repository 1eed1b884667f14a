"""Export a model family into a Triton model repository (docs/design.md section 2).

`NAME_image`, `NAME_instruction` (FocalLens only) and `NAME_text`, each a TorchScript
`1/model.pt` plus a `config.pbtxt` whose parameters carry the family's metadata. Each role's
file holds only the weights that role runs. The family's tokenizer is written beside its text
model (`tokenizer_export`), where the gateway reads it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from focalserve_family import (
    Backend,
    BatchingPolicy,
    FamilyKind,
    FamilyMetadata,
    ModelSpec,
    Role,
    TensorSpec,
    default_batching,
    model_config,
    model_specs,
    to_pbtxt,
)
from focalserve_training.models import FamilyModel, FocalLensCLIP
from focalserve_training.models.factory import state_hash, tokenizer_spec
from focalserve_training.models.focallens import (
    Attention,
    BaseCLIP,
    conditional_image_features,
    fused_gated_attention,
    readout_image_features,
    text_embedding_dim,
    text_side,
)
from focalserve_training.tokenizer_export import write_tokenizer

PYTHON_BACKEND_MODEL = Path(__file__).resolve().parent / "templates" / "model.py"


class PixelNormalisation(nn.Module):
    """uint8 RGB (N, 3, S, S) -> the float input the tower was trained on, inside the graph: the
    division runs on the model's own device and every wire carries a quarter of float32's bytes."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() * self.scale - self.shift


class ImageEncoder(nn.Module):
    """PIXELS -> L2-normalised EMBEDDING (plain CLIP): the image tower alone."""

    def __init__(self, clip: BaseCLIP, normalise: PixelNormalisation) -> None:
        super().__init__()
        self.normalise = normalise
        self.visual = clip.visual

    def forward(self, PIXELS: torch.Tensor) -> torch.Tensor:  # noqa: N803 (Triton tensor name)
        return F.normalize(self.visual(self.normalise(PIXELS)), dim=-1)


class ConditionalImageEncoder(nn.Module):
    """(PIXELS, CONDITION) -> L2-normalised conditional EMBEDDING (FocalLens): the image tower and
    the condition token alone, with the gated attention in its fused form."""

    def __init__(
        self, model: FocalLensCLIP, normalise: PixelNormalisation, attention: Attention = fused_gated_attention
    ) -> None:
        super().__init__()
        self.normalise = normalise
        self.visual = model.clip.visual
        self.condition_token = model.condition_token
        self.attention = attention  # the benchmark traces the hand-written form too

    def forward(self, PIXELS: torch.Tensor, CONDITION: torch.Tensor) -> torch.Tensor:  # noqa: N803
        features = conditional_image_features(
            self.visual, self.condition_token, self.normalise(PIXELS), CONDITION, self.attention
        )
        return F.normalize(features, dim=-1)


class ReadoutImageEncoder(nn.Module):
    """(PIXELS (N, 3, S, S), CONDITION (N, K, C)) -> L2-normalised EMBEDDING (N, K, D) (FocalLens, readout):
    each image's trunk runs once for its K conditions; the image tower and the condition token alone."""

    def __init__(self, model: FocalLensCLIP, normalise: PixelNormalisation) -> None:
        super().__init__()
        self.normalise = normalise
        self.visual = model.clip.visual
        self.condition_token = model.condition_token

    def forward(self, PIXELS: torch.Tensor, CONDITION: torch.Tensor) -> torch.Tensor:  # noqa: N803
        images, per_image = CONDITION.shape[0], CONDITION.shape[1]
        image_index = torch.arange(images, device=PIXELS.device).repeat_interleave(per_image)
        _, features = readout_image_features(
            self.visual, self.condition_token, self.normalise(PIXELS), CONDITION.reshape(images * per_image, -1),
            image_index,
        )
        return F.normalize(features, dim=-1).reshape(images, per_image, -1)


class InstructionEncoder(nn.Module):
    """TOKENS -> CONDITION (FocalLens): the instruction tower alone."""

    def __init__(self, model: FocalLensCLIP) -> None:
        super().__init__()
        self.instruction_tower = model.instruction_tower

    def forward(self, TOKENS: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.instruction_tower(TOKENS)


class TextEncoder(nn.Module):
    """TOKENS -> L2-normalised EMBEDDING: the answer / query text tower alone."""

    def __init__(self, model: FamilyModel) -> None:
        super().__init__()
        self.text = text_side(model.clip if isinstance(model, FocalLensCLIP) else model)

    def forward(self, TOKENS: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.text.encode_text(TOKENS, normalize=True)


def family_metadata(model: FamilyModel, family: FamilyKind, name: str, model_name: str) -> FamilyMetadata:
    clip: BaseCLIP = model.clip if isinstance(model, FocalLensCLIP) else model
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    size = preprocess["size"]
    image_size = size if isinstance(size, int) else size[0]
    tokenizer, context_length = tokenizer_spec(model_name)
    return FamilyMetadata(
        family=family,
        name=name,
        open_clip_model=model_name,
        image_size=int(image_size),
        image_mean=tuple(preprocess["mean"]),
        image_std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
        tokenizer=tokenizer,
        context_length=context_length,
        embedding_dim=text_embedding_dim(clip),  # read off the weights: no forward, on any device
        condition_dim=model.condition_dim if isinstance(model, FocalLensCLIP) else 0,
        checkpoint_hash=state_hash(model),
        conditioning=model.conditioning if isinstance(model, FocalLensCLIP) else "full",
    )


def role_modules(model: FamilyModel, metadata: FamilyMetadata) -> dict[Role, nn.Module]:
    """The module each Triton model of the family runs (tensor names as in `model_specs`)."""
    normalise = PixelNormalisation(metadata.image_mean, metadata.image_std)
    if isinstance(model, FocalLensCLIP):
        image: nn.Module = (ReadoutImageEncoder(model, normalise) if model.conditioning == "readout"
                            else ConditionalImageEncoder(model, normalise))
        return {"image": image, "instruction": InstructionEncoder(model), "text": TextEncoder(model)}
    return {"image": ImageEncoder(model, normalise), "text": TextEncoder(model)}


TRACED_VARIABLE_DIM = 3  # a -1 dimension (a readout row's conditions) is traced at this size


def example_inputs(specs: tuple[TensorSpec, ...], batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for spec in specs:
        shape = (batch, *(TRACED_VARIABLE_DIM if dim == -1 else dim for dim in spec.dims))
        if spec.dtype == "int64":
            examples.append(torch.randint(1, 1000, shape, generator=generator))
        elif spec.dtype == "uint8":
            examples.append(torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8))
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
    model: FamilyModel,
    family: FamilyKind,
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
    modules = role_modules(model, metadata)
    specs = model_specs(metadata, batching.max_batch_size)
    directories = [_write_model(spec, modules[role], metadata, repository, backend, batching)
                   for role, spec in specs.items()]
    write_tokenizer(repository / specs["text"].name, metadata.tokenizer, metadata.context_length)
    return directories


def _write_model(
    spec: ModelSpec,
    module: nn.Module,
    metadata: FamilyMetadata,
    repository: Path,
    backend: Backend,
    batching: BatchingPolicy,
) -> Path:
    directory = repository / spec.name
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "1").mkdir(parents=True)
    to_torchscript(module, example_inputs(spec.inputs)).save(str(directory / "1" / "model.pt"))
    if backend == "python":
        shutil.copy(PYTHON_BACKEND_MODEL, directory / "1" / "model.py")
    (directory / "config.pbtxt").write_text(to_pbtxt(model_config(spec, metadata, backend, batching)))
    return directory
