"""Building and loading model families from open_clip names, pretrained tags and checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeAlias

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn

from focalserve_family import CONDITIONAL_FAMILY, FAMILY_KINDS, FamilyKind
from focalserve_training.models.architecture import check_checkpoint, check_pretrained_tag
from focalserve_training.models.focallens import FocalLensCLIP
from focalserve_training.models.lora import has_lora, merge_lora
from focalserve_training.options import LORA_ALPHA

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

FamilyModel: TypeAlias = CLIP | FocalLensCLIP  # a plain (or FSC-)CLIP, or a conditional FocalLens model


def register_model_configs() -> None:
    """Make the project's open_clip configs (e.g. `focalserve-tiny`) known to open_clip."""
    if "focalserve-tiny" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def create_base_clip(model_name: str, pretrained: str | None = None) -> CLIP:
    """An open_clip CLIP from a config name and an optional pretrained tag or weights file.

    A tag trained with the other activation (e.g. `openai` for a GELU config) is refused:
    open_clip only warns, and the embeddings would silently differ.
    """
    register_model_configs()
    check_pretrained_tag(model_name, pretrained)
    model = open_clip.create_model(model_name, pretrained=pretrained or None)
    if not isinstance(model, CLIP):
        raise ValueError(f"{model_name} is not a two-tower open_clip CLIP ({type(model).__name__})")
    return model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as a dict holding `state_dict`.

    Accepts our own checkpoints, the public FSC-CLIP format ({epoch, name, state_dict,
    optimizer, scaler}) and a bare state dict. Loaded with `weights_only=True`: those formats
    hold only tensors and plain values, so no pickled code ever runs.
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict, found {type(checkpoint).__name__}")
    if "state_dict" not in checkpoint:
        checkpoint = {"state_dict": checkpoint}
    state = checkpoint["state_dict"]
    if state and all(key.startswith("module.") for key in state):  # saved from DDP
        checkpoint["state_dict"] = {key.removeprefix("module."): value for key, value in state.items()}
    return checkpoint


def read_weights(path: str | Path, model_name: str, lora_alpha: float = LORA_ALPHA) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, checked against the config `model_name` (CheckpointMismatch names the
    config it needs) and with any LoRA factors merged into their weights, ready for strict loading."""
    register_model_configs()
    checkpoint = read_checkpoint(path)
    check_checkpoint(model_name, checkpoint, Path(path))
    state = checkpoint["state_dict"]
    return merge_lora(state, lora_alpha) if has_lora(state) else state


def build_family_model(family: FamilyKind, base: CLIP) -> FamilyModel:
    if family == "clip":
        return base
    if family == CONDITIONAL_FAMILY:
        return FocalLensCLIP(base)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILY_KINDS}")


def load_family_model(
    family: FamilyKind,
    model_name: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    lora_alpha: float = LORA_ALPHA,
) -> FamilyModel:
    """A model of `family` on the open_clip architecture `model_name`, in eval mode.

    A FocalLens checkpoint holds the whole conditional model; a CLIP-layout checkpoint
    (ours or FSC-CLIP's, full or LoRA) given for the focallens family initialises its base CLIP
    instead, which is how a FocalLens fine-tune starts from an FSC-CLIP or other CLIP checkpoint.
    """
    state = read_weights(checkpoint, model_name, lora_alpha) if checkpoint else None
    base = create_base_clip(model_name, pretrained)
    if state is not None and not _is_focallens_state(state):
        base.load_state_dict(state)
        state = None
    model = build_family_model(family, base)
    if state is not None:
        if family != CONDITIONAL_FAMILY:
            raise ValueError(f"{checkpoint} holds a FocalLens model, not a plain CLIP")
        model.load_state_dict(state)
    return model.eval()


def _is_focallens_state(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("condition_token.") for key in state)


def state_hash(model: nn.Module) -> str:
    """A short content hash of a model's weights: which checkpoint produced an embedding."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
