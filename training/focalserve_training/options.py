"""Training and checkpoint options whose defaults `focalserve train|export|eval` show: kept free of torch
and open_clip imports, like `recipe_names`, so that the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass

LORA_ALPHA = 1.0  # the FSC-CLIP release's lora_alpha: its rank-4 LoRA deltas are scaled by 1/4


@dataclass(frozen=True)
class FSCCLIPOptions:
    """FSC-CLIP's knobs, defaulting to the reference's COCO ViT-B/32 script."""

    global_hn_weight: float = 0.5  # the reference's CC3M scripts use 1.0
    local_hn_weight: float = 0.2  # its ViT-B-16 and ViT-L-14 scripts use 0.5
    focal_gamma: float = 2.0  # SCR's focusing exponent
    label_smoothing: float = 0.02  # SCR's epsilon, shared among the positive and the valid negatives
    strict_negative_slots: bool = True  # slot j holds generator j's negative or is masked, as in the reference


FSC_CLIP_REFERENCE = FSCCLIPOptions()
