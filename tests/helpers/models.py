"""Tiny real open_clip models for tests (the `focalserve-tiny` config, random weights)."""

from __future__ import annotations

import torch

from focalserve_family import Conditioning
from focalserve_training.models import FocalLensCLIP, load_family_model

TINY = "focalserve-tiny"
MINILM = "focalserve-minilm"  # the tiny ViT with all-MiniLM-L6-v2 (a Hugging Face tower) as its text tower


def tiny_focallens(
    seed: int = 0, open_condition: bool = True, model_name: str = TINY, conditioning: Conditioning = "full"
) -> FocalLensCLIP:
    """A FocalLens model; with `open_condition` its condition path is non-zero, as after training.

    At initialisation the condition token is gated off (the model equals its base CLIP), so a
    test that needs instructions to matter opens the gates and randomises the projection.
    """
    torch.manual_seed(seed)
    model = load_family_model("focallens", model_name, conditioning=conditioning)
    if open_condition:
        with torch.no_grad():
            model.condition_token.gates.fill_(1.0)
            model.condition_token.projection.weight.normal_(std=1.0)
    return model.eval()


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_family_model("clip", TINY)
