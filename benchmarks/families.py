"""The model families the serving benchmark runs, exported in both repository flavours.

Every system under test must run the same weights, or the comparison says nothing: the
embedded backend, the raw forward, PyTriton and the naive server read the libtorch-flavour
repository, Triton reads the python-backend one, and both hold the same TorchScript weights
(checked through the checkpoint hash the export writes into every config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from focalserve_family import Backend, FamilySpec, families_from_configs, read_repository
from focalserve_training.demo_recipe import MODEL as DEMO_MODEL
from focalserve_training.demo_weights import build_key, load_shipped, shipped_path
from focalserve_training.export import export_family
from focalserve_training.models import load_family_model

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = Path(__file__).resolve().parent / ".work"
RANDOM_SEED = 0  # random weights, but the same ones on every run, so exports can be reused


@dataclass(frozen=True)
class BenchFamily:
    """One model family: where each repository flavour lives, and its metadata."""

    name: str
    spec: FamilySpec
    libtorch_repository: Path  # embedded backend, raw forward, PyTriton, naive server
    python_repository: Path  # tritonserver's python backend


@dataclass(frozen=True)
class FamilySource:
    """How to build a family: an open_clip architecture, and the demo's shipped parameters or random weights."""

    open_clip_model: str
    shipped: str | None  # a family whose trained parameters are in training/demo_weights/
    committed_repository: Path | None  # a libtorch-flavour repository that already exists

    def load(self) -> torch.nn.Module:
        if self.shipped is not None:
            return load_shipped(shipped_path(self.shipped))[0]
        torch.manual_seed(RANDOM_SEED)
        return load_family_model("focallens", self.open_clip_model)


SOURCES: dict[str, FamilySource] = {
    "demo": FamilySource(DEMO_MODEL, "demo", ROOT / "model_repository"),
    "vitb32": FamilySource("ViT-B-32", None, None),  # open_clip has no weights offline: random ones
    "vitl14-336": FamilySource("ViT-L-14-336", None, None),
}
CPU_MODELS = ("demo", "vitb32")  # what `make bench` measures on two cores; ViT-L-14-336 is for GPU hosts


def prepare_family(name: str, work_dir: Path = WORK_DIR) -> BenchFamily:
    """Export what is missing (once; later runs reuse it) and check both flavours hold the same weights."""
    source = SOURCES[name]
    exports = export_dir(work_dir, name, source.open_clip_model)
    flavours: dict[Backend, Path] = {
        "libtorch": source.committed_repository or exports / "libtorch",
        "python": exports / "python",
    }
    if source.committed_repository is not None and _read_family(name, source.committed_repository) is None:
        raise RuntimeError(f"family {name} is missing from {source.committed_repository}: run `make demo-repository`")
    missing = [backend for backend, repository in flavours.items() if _read_family(name, repository) is None]
    if missing:
        model = source.load()
        for backend in missing:
            export_family(model, "focallens", source.open_clip_model, name, flavours[backend], backend)
    libtorch, python = (_read_family(name, flavours[backend]) for backend in ("libtorch", "python"))
    if libtorch is None or python is None or libtorch.checkpoint_hash != python.checkpoint_hash:
        raise RuntimeError(
            f"family {name}: the repositories {flavours['libtorch']} and {flavours['python']} do not hold the same "
            "weights; delete the work copy (or run `make demo-repository` for the demo) and rerun"
        )
    return BenchFamily(name, libtorch, flavours["libtorch"], flavours["python"])


def export_dir(work_dir: Path, name: str, open_clip_model: str) -> Path:
    """Where the benchmarks keep their export of `name`: keyed by all the training and family code
    and the library versions (`build_key`), so a graph traced by older code is never measured as
    the new one."""
    return work_dir / name / build_key(name, open_clip_model)


def _read_family(name: str, repository: Path) -> FamilySpec | None:
    """The family's spec if the repository holds all of its models with their weights, else None."""
    if not repository.is_dir():
        return None
    spec = families_from_configs(read_repository(repository)).get(name)
    if spec is None or not all((repository / m.name / "1" / "model.pt").is_file() for m in spec.models.values()):
        return None
    return spec
