"""Model families built on open_clip: plain CLIP (incl. FSC-CLIP weights) and FocalLens."""

from focalserve_training.models.factory import (
    FamilyModel,
    create_base_clip,
    load_family_model,
    register_model_configs,
)
from focalserve_training.models.focallens import ConditionToken, FocalLensCLIP, InstructionTower

__all__ = [
    "ConditionToken",
    "FamilyModel",
    "FocalLensCLIP",
    "InstructionTower",
    "create_base_clip",
    "load_family_model",
    "register_model_configs",
]
