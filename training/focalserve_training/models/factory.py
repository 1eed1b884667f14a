"""Building and loading model families from open_clip names, pretrained tags and checkpoints."""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

import open_clip
import torch
from open_clip.hf_configs import arch_dict
from open_clip.model import CLIP, CustomTextCLIP
from torch import nn

from focalserve_family import CONDITIONAL_FAMILY, CONDITIONINGS, FAMILY_KINDS, Conditioning, FamilyKind
from focalserve_family.text_towers import Tokenizer, create_tokenizer, local_text_tower, tokenizer_name
from focalserve_training.models.architecture import check_checkpoint, check_pretrained_tag
from focalserve_training.models.focallens import BaseCLIP, ConditioningError, FocalLensCLIP
from focalserve_training.models.lora import has_lora, merge_lora
from focalserve_training.options import LORA_ALPHA

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

FamilyModel: TypeAlias = BaseCLIP | FocalLensCLIP  # a plain (or FSC-)CLIP, or a conditional FocalLens model


@cache
def project_model_configs() -> dict[str, dict[str, Any]]:
    """The project's open_clip configs as written: Hugging Face text towers named by hub id."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(MODEL_CONFIG_DIR.glob("*.json"))}


def register_model_configs(needed: str | None = None) -> None:
    """Make the project's open_clip configs (e.g. `focalserve-tiny`) known to open_clip.

    A text tower named by a hub id that an installed package ships (`focalserve-minilm`'s
    all-MiniLM-L6-v2) is registered pointing at the package's directory, so that open_clip and
    transformers never reach for the hub. A config whose package is not installed stays
    unregistered, so that every other model still builds on such a machine (a GPU host that only
    benchmarks ViTs, say); ModuleNotFoundError names the package when that config is `needed`.
    open_clip registers configs from files only, so the resolved configs pass through a temporary
    directory; the registry keeps them after it is gone.
    """
    registered = set(open_clip.list_models())
    resolved: dict[str, dict[str, Any]] = {}
    for name, config in project_model_configs().items():
        if name in registered:
            continue
        try:
            resolved[name] = _with_local_text_tower(config)
        except ModuleNotFoundError:
            if name == needed:
                raise
    if not resolved:
        return
    _complete_bert_arch()
    with tempfile.TemporaryDirectory(prefix="focalserve-configs-") as directory:
        for name, config in resolved.items():
            (Path(directory) / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(directory)


def _with_local_text_tower(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its Hugging Face model and tokenizer pointing at this machine's files."""
    text = dict(config["text_cfg"])
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text:
            text[key] = local_text_tower(text[key])
    return {**config, "text_cfg": text}


def _complete_bert_arch() -> None:
    """open_clip's table of Hugging Face architectures names no layers for BERT, which its
    lock_text_tower(N > 0) needs; BERT's modules have RoBERTa's names (`encoder.layer`, `embeddings`)."""
    names = arch_dict["bert"]["config_names"]
    names.setdefault("layer_attr", "layer")
    names.setdefault("token_embeddings_attr", "embeddings")


def text_config(model_name: str) -> dict[str, Any]:
    """A config's `text_cfg` as written (a hub id, not this machine's path, for a Hugging Face tower)."""
    register_model_configs()
    config = project_model_configs().get(model_name) or open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"unknown open_clip model config {model_name!r}")
    return config["text_cfg"]


def tokenizer_spec(model_name: str) -> tuple[str, int]:
    """(the tokenizer's name in family metadata, context length) of an open_clip config.

    The context length is the config's: a Hugging Face tower's own limit (512 for BERT) is
    far longer than the instructions and answers it reads.
    """
    text = text_config(model_name)
    return tokenizer_name(model_name, text.get("hf_tokenizer_name")), int(text.get("context_length", 77))


def create_text_tokenizer(model_name: str) -> Tokenizer:
    """The tokenizer of an open_clip config, as the gateway will build it from the family's metadata."""
    return create_tokenizer(*tokenizer_spec(model_name))


def create_base_clip(model_name: str, pretrained: str | None = None) -> BaseCLIP:
    """An open_clip CLIP from a config name and an optional pretrained tag or weights file.

    Its text tower is open_clip's own (CLIP) or a Hugging Face model (CustomTextCLIP). A tag
    trained with the other activation (e.g. `openai` for a GELU config) is refused: open_clip
    only warns, and the embeddings would silently differ.
    """
    register_model_configs(needed=model_name)
    check_pretrained_tag(model_name, pretrained)
    model = open_clip.create_model(model_name, pretrained=pretrained or None)
    if not isinstance(model, CLIP | CustomTextCLIP):
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


def read_weights(
    path: str | Path, model_name: str, lora_alpha: float = LORA_ALPHA
) -> tuple[dict[str, torch.Tensor], Conditioning | None]:
    """A checkpoint's state dict, checked against the config `model_name` (CheckpointMismatch names the
    config it needs) and with any LoRA factors merged into their weights, ready for strict loading;
    and the conditioning a FocalLens checkpoint was trained with (None where it records none)."""
    register_model_configs()
    checkpoint = read_checkpoint(path)
    check_checkpoint(model_name, checkpoint, Path(path))
    state = checkpoint["state_dict"]
    conditioning = checkpoint.get("conditioning")
    if conditioning is not None and conditioning not in CONDITIONINGS:
        raise ConditioningError(f"{path}: unknown conditioning {conditioning!r}; expected one of {CONDITIONINGS}")
    return (merge_lora(state, lora_alpha) if has_lora(state) else state), conditioning


def build_family_model(family: FamilyKind, base: BaseCLIP, conditioning: Conditioning = "full") -> FamilyModel:
    if family == "clip":
        return base
    if family == CONDITIONAL_FAMILY:
        return FocalLensCLIP(base, conditioning)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILY_KINDS}")


def load_family_model(
    family: FamilyKind,
    model_name: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    lora_alpha: float = LORA_ALPHA,
    conditioning: Conditioning | None = None,
) -> FamilyModel:
    """A model of `family` on the open_clip architecture `model_name`, in eval mode.

    A FocalLens checkpoint holds the whole conditional model and records its conditioning
    (`full` where it records none: checkpoints from before readout conditioning); asking for
    another is an error. A CLIP-layout checkpoint (ours or FSC-CLIP's, full or LoRA) given for
    the focallens family initialises its base CLIP instead, which is how a FocalLens fine-tune
    starts from an FSC-CLIP or other CLIP checkpoint; `conditioning` (default `full`) then chooses.
    """
    state, recorded = read_weights(checkpoint, model_name, lora_alpha) if checkpoint else (None, None)
    base = create_base_clip(model_name, pretrained)
    if state is not None and not _is_focallens_state(state):
        base.load_state_dict(state)
        state, recorded = None, None
    if state is not None:
        recorded = recorded or "full"
        if conditioning is not None and conditioning != recorded:
            raise ConditioningError(
                f"{checkpoint} holds a FocalLens model with {recorded} conditioning, not {conditioning}"
            )
    model = build_family_model(family, base, recorded or conditioning or "full")
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
