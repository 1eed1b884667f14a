"""The model-family contract between export and serving (docs/design.md section 2).

A family is one checkpoint served as Triton models, one per role. This package is the only
definition of what those models are called, which tensors they take and give, and how the
family's metadata rides in `config.pbtxt` parameters: export writes it, the gateway reads it,
and neither imports the other.
"""

from focalserve_family.config import (
    BACKENDS,
    Backend,
    BatchingPolicy,
    default_batching,
    families_from_configs,
    model_config,
    parse_pbtxt,
    read_repository,
    to_pbtxt,
)
from focalserve_family.spec import (
    CONDITIONAL_FAMILY,
    CONDITIONINGS,
    FAMILY_KINDS,
    ROLES,
    Conditioning,
    FamilyKind,
    FamilyMetadata,
    FamilySpec,
    ModelSpec,
    RepositoryError,
    Role,
    TensorSpec,
    model_specs,
)

__all__ = [
    "BACKENDS",
    "CONDITIONAL_FAMILY",
    "CONDITIONINGS",
    "FAMILY_KINDS",
    "ROLES",
    "Backend",
    "Conditioning",
    "BatchingPolicy",
    "FamilyKind",
    "FamilyMetadata",
    "FamilySpec",
    "ModelSpec",
    "RepositoryError",
    "Role",
    "TensorSpec",
    "default_batching",
    "families_from_configs",
    "model_config",
    "model_specs",
    "parse_pbtxt",
    "read_repository",
    "to_pbtxt",
]
