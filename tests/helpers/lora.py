"""Fake checkpoints in the public FSC-CLIP LoRA format: a CLIP state dict plus unmerged loralib factors."""

from __future__ import annotations

import torch

LINEAR_TARGETS = ("attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def with_lora_factors(state: dict[str, torch.Tensor], rank: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`state` plus random factors, in the release's key names and shapes, for every layer it adapts:
    both towers' attention (packed in_proj and out_proj) and MLPs, and the patch embedding."""
    generator = torch.Generator().manual_seed(seed)

    def factor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.1

    factors = {}
    for key, weight in state.items():
        if key.endswith("attn.in_proj_weight"):
            factors[key + "_lora_A"] = factor(rank, weight.shape[1])
            factors[key + "_lora_B"] = factor(weight.shape[0], rank)
        elif key.endswith(LINEAR_TARGETS):
            stem = key.removesuffix("weight")
            factors[stem + "lora_A"] = factor(rank, weight.shape[1])
            factors[stem + "lora_B"] = factor(weight.shape[0], rank)
        elif key == "visual.conv1.weight":
            out_channels, in_channels, kernel, _ = weight.shape
            factors["visual.conv1.lora_A"] = factor(rank * kernel, in_channels * kernel)
            factors["visual.conv1.lora_B"] = factor(out_channels * kernel, rank * kernel)
    return {**state, **factors}


def release_checkpoint(state: dict[str, torch.Tensor], ddp_prefix: bool) -> dict[str, object]:
    """The release's file layout: {epoch, name, state_dict, optimizer, scaler}, keys `module.`-prefixed from DDP."""
    if ddp_prefix:
        state = {f"module.{key}": value for key, value in state.items()}
    return {"epoch": 5, "name": "fsc-clip-lora", "state_dict": state, "optimizer": {}, "scaler": {}}
