"""Merging loralib-style LoRA factors into their base weights, so that LoRA checkpoints load strictly.

The public FSC-CLIP LoRA checkpoints come from loralib layers patched into open_clip and saved
with the factors unmerged (their `train(False)` never merges, so the base weights are the
pretrained ones). Layouts, as loralib stores them, with r the rank and k the kernel size:

- Linear `X.lora_A` (r, in), `X.lora_B` (out, r), onto `X.weight` (out, in): the MLP's c_fc and
  c_proj and the attention's out_proj;
- the attention's packed input projection `X.in_proj_weight_lora_A` (r, width),
  `X.in_proj_weight_lora_B` (3 * width, r), onto `X.in_proj_weight` (3 * width, width);
- Conv2d `X.lora_A` (r * k, in * k), `X.lora_B` (out * k, r * k), onto `X.weight` (out, in, k, k):
  the patch embedding `visual.conv1`, whose delta is B @ A viewed as the kernel's shape.

Each weight becomes W + (lora_alpha / r) * B @ A.
"""

from __future__ import annotations

from torch import Tensor

_A, _B = "lora_A", "lora_B"


def has_lora(state: dict[str, Tensor]) -> bool:
    return any(map(_is_factor, state))


def merge_lora(state: dict[str, Tensor], lora_alpha: float) -> dict[str, Tensor]:
    """`state` with every LoRA pair merged into its base weight and the factors removed.

    Raises ValueError naming the key when a factor has no partner or no base weight, or when the
    factors' shapes do not fit the weight.
    """
    merged = {key: value for key, value in state.items() if not _is_factor(key)}
    factors = {key.removesuffix(_A).removesuffix(_B) for key in state if _is_factor(key)}
    for stem in sorted(factors):
        key_a, key_b, target = stem + _A, stem + _B, _base_weight_key(stem)
        for key in (key_a, key_b, target):
            if key not in state:
                raise ValueError(f"LoRA factors {stem}{_A}/{_B}: the checkpoint has no {key}")
        merged[target] = _merge(state[target], state[key_a], state[key_b], lora_alpha, target)
    return merged


def _base_weight_key(stem: str) -> str:
    """`attn.in_proj_weight_` -> `attn.in_proj_weight`; `mlp.c_fc.` -> `mlp.c_fc.weight` (factor keys less lora_A/B)."""
    return stem.removesuffix("_") if stem.endswith("_") else stem + "weight"


def _merge(weight: Tensor, a: Tensor, b: Tensor, lora_alpha: float, name: str) -> Tensor:
    # A convolution's factors stack the kernel size into both dimensions of A: (r * k, in * k).
    rank = a.shape[0] // weight.shape[-1] if weight.ndim == 4 else a.shape[0]
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or b.shape[0] * a.shape[1] != weight.numel():
        raise ValueError(f"LoRA factors B {tuple(b.shape)}, A {tuple(a.shape)} do not fit {name} {tuple(weight.shape)}")
    delta = (b.float() @ a.float()).view(weight.shape)
    return (weight.float() + (lora_alpha / rank) * delta).to(weight.dtype)


def _is_factor(key: str) -> bool:
    return key.endswith((_A, _B))
