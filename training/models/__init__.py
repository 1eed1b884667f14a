"""Model families built on open_clip: plain CLIP (incl. FSC-CLIP weights) and FocalLens."""

from training.models.factory import (
    FAMILIES,
    Family,
    create_base_clip,
    load_family_model,
    register_model_configs,
)
from training.models.focallens import ConditionToken, FocalLensCLIP, InstructionTower

__all__ = [
    "FAMILIES",
    "ConditionToken",
    "Family",
    "FocalLensCLIP",
    "InstructionTower",
    "create_base_clip",
    "load_family_model",
    "register_model_configs",
]
