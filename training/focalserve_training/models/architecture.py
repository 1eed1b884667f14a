"""Does a checkpoint fit the chosen open_clip config? If not, which config does it need?

Shapes are read from the weights. The activation cannot be: QuickGELU and GELU models have the
same keys and shapes, and weights trained under one run without error under the other, giving
other embeddings. Running the model both ways on a probe does not settle it either: without
data whose answers are known, both give plausible embeddings. So the activation comes from the
checkpoint's provenance: the config a FocalServe checkpoint records, the pretrained weights a
public FSC-CLIP file starts from (its file name says which), or the tag given to `--pretrained`;
open_clip's pretrained registry says which weights are QuickGELU. A checkpoint without provenance
whose shapes fit configs of both activations gets a warning naming them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import Tensor

# The public FSC-CLIP files are named DATA_fsc-clip[-lora]-ARCH.pt; DATA says which weights they start from.
_RELEASE_FILE = re.compile(r"(?P<data>coco|cc3m|laioncoco|dcxl)_fsc-clip(?:-lora)?-(?P<arch>ViT-[A-Z]-\d+)\.pt")
_RELEASE_PRETRAINED = {"coco": "openai", "cc3m": "openai", "laioncoco": "openai", "dcxl": "datacomp_xl_s13b_b90k"}


class CheckpointMismatch(ValueError):
    """`checkpoint` does not fit the open_clip config `model_name`; `configs` would fit it."""

    def __init__(self, checkpoint: str, model_name: str, reason: str, configs: Sequence[str]) -> None:
        self.checkpoint, self.model_name, self.configs = checkpoint, model_name, tuple(configs)
        fix = f"use --model {' or '.join(configs)}" if configs else "no registered open_clip config fits it"
        super().__init__(f"{checkpoint} does not fit {model_name}: {reason}; {fix}")


class ActivationWarning(UserWarning):
    """The activation a checkpoint was trained with is unknown, and both would load."""


@dataclass(frozen=True)
class Shapes:
    """What an open_clip ViT CLIP's weight shapes determine."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp_width: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_mlp_width: int
    embed_dim: int


@dataclass(frozen=True)
class Provenance:
    quick_gelu: bool
    source: str  # completes "the checkpoint ...", e.g. "records the config ViT-B-32-quickgelu"


def uses_quick_gelu(model_name: str) -> bool:
    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def checkpoint_shapes(state: dict[str, Tensor]) -> Shapes | None:
    """The shapes of a CLIP state dict (or of the `clip.` part of a FocalLens one); None if it is
    not an open_clip ViT layout, which strict loading then reports key by key."""
    p = "clip." if "clip.visual.conv1.weight" in state else ""
    try:
        conv, tokens = state[p + "visual.conv1.weight"], state[p + "token_embedding.weight"]
        positions = state[p + "visual.positional_embedding"].shape[0] - int(p + "visual.class_embedding" in state)
        return Shapes(
            image_size=math.isqrt(positions) * conv.shape[-1],
            patch_size=conv.shape[-1],
            vision_width=conv.shape[0],
            vision_layers=_blocks(state, p + "visual.transformer.resblocks."),
            vision_mlp_width=state[p + "visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            context_length=state[p + "positional_embedding"].shape[0],
            vocab_size=tokens.shape[0],
            text_width=tokens.shape[1],
            text_layers=_blocks(state, p + "transformer.resblocks."),
            text_mlp_width=state[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            embed_dim=state[p + "text_projection"].shape[-1],
        )
    except KeyError:
        return None


def config_shapes(model_name: str) -> Shapes | None:
    """The shapes an open_clip config builds; None for configs that are not plain ViT CLIPs."""
    config = open_clip.get_model_config(model_name)
    if config is None or "multimodal_cfg" in config:  # CoCa and the like are not two-tower CLIPs
        return None
    try:
        vision, text = CLIPVisionCfg(**config["vision_cfg"]), CLIPTextCfg(**config["text_cfg"])
    except (KeyError, TypeError):  # a config with fields of its own
        return None
    image_size, patch_size = _square(vision.image_size), _square(vision.patch_size)
    if vision.timm_model_name or text.hf_model_name or not isinstance(vision.layers, int):
        return None
    if image_size is None or patch_size is None:
        return None
    return Shapes(
        image_size, patch_size, vision.width, vision.layers, int(vision.width * vision.mlp_ratio),
        text.context_length, text.vocab_size, text.width, text.layers, int(text.width * text.mlp_ratio),
        config["embed_dim"],
    )


def configs_with_shapes(shapes: Shapes | None, quick_gelu: bool | None = None) -> list[str]:
    """Registered open_clip configs that build `shapes`, optionally only those of one activation."""
    if shapes is None:
        return []
    return [
        name
        for name in open_clip.list_models()
        if config_shapes(name) == shapes and quick_gelu in (None, uses_quick_gelu(name))
    ]


def release_pretrained(path: Path) -> tuple[str, str] | None:
    """(architecture, open_clip pretrained tag) a public FSC-CLIP file was fine-tuned from, by its name."""
    match = _RELEASE_FILE.fullmatch(path.name)
    return (match["arch"], _RELEASE_PRETRAINED[match["data"]]) if match else None


def provenance(checkpoint: dict[str, Any], path: Path) -> Provenance | None:
    """The activation a checkpoint was trained with, where something records it."""
    recorded = checkpoint.get("model_name")
    if isinstance(recorded, str) and open_clip.get_model_config(recorded):
        return Provenance(uses_quick_gelu(recorded), f"records the config {recorded}")
    released = release_pretrained(path)
    if released:
        arch, tag = released
        quick_gelu = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        return Provenance(quick_gelu, f"is FSC-CLIP fine-tuned from {arch} {tag} weights")
    return None


def check_checkpoint(model_name: str, checkpoint: dict[str, Any], path: Path) -> None:
    """Raises CheckpointMismatch if the weights' shapes or recorded activation do not fit `model_name`;
    warns (ActivationWarning) if the activation is unknown and configs of both would load them."""
    shapes, expected = checkpoint_shapes(checkpoint["state_dict"]), config_shapes(model_name)
    if shapes and expected and shapes != expected:
        raise CheckpointMismatch(str(path), model_name, "its weights have other shapes", configs_with_shapes(shapes))
    origin = provenance(checkpoint, path)
    if origin is None:
        _warn_if_ambiguous(model_name, shapes, path)
    elif origin.quick_gelu != uses_quick_gelu(model_name):
        needed = origin.quick_gelu
        reason = f"it {origin.source} ({_activation(needed)}), and {model_name} uses {_activation(not needed)}"
        raise CheckpointMismatch(str(path), model_name, reason, configs_with_shapes(expected, needed))


def check_pretrained_tag(model_name: str, pretrained: str | None) -> None:
    """Raises CheckpointMismatch if `pretrained` is an open_clip tag trained with the other activation."""
    if not pretrained:
        return
    tag = open_clip.get_pretrained_cfg(model_name, pretrained)  # {} for a weights file
    needed = bool(tag.get("quick_gelu", False))
    if tag and needed != uses_quick_gelu(model_name):
        reason = f"they were trained with {_activation(needed)}, and {model_name} uses {_activation(not needed)}"
        fits = configs_with_shapes(config_shapes(model_name), needed)
        raise CheckpointMismatch(f"open_clip's {pretrained} weights", model_name, reason, fits)


def _warn_if_ambiguous(model_name: str, shapes: Shapes | None, path: Path) -> None:
    quick, gelu = configs_with_shapes(shapes, True), configs_with_shapes(shapes, False)
    if quick and gelu:
        warnings.warn(
            f"{path} does not record its activation, and its shapes fit {', '.join(gelu)} (GELU) and "
            f"{', '.join(quick)} (QuickGELU); loading it as {model_name}. Weights fine-tuned from OpenAI's "
            "CLIP need QuickGELU, from LAION or DataComp weights GELU",
            ActivationWarning,
            stacklevel=3,
        )


def _activation(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def _blocks(state: dict[str, Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def _square(size: int | Sequence[int] | None) -> int | None:
    """The side of a square size; None for no size (a ResNet's patch) or a rectangle."""
    if size is None or isinstance(size, int):
        return size
    return size[0] if len(set(size)) == 1 else None
