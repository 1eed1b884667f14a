"""Session fixtures: one exported tiny FocalLens family and one CLIP family."""

from __future__ import annotations

from pathlib import Path

import pytest

from focalserve_training.export import export_family
from tests.helpers.models import TINY, tiny_clip, tiny_focallens


@pytest.fixture(scope="session")
def focallens_model():
    return tiny_focallens()


@pytest.fixture(scope="session")
def clip_model():
    return tiny_clip()


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, focallens_model, clip_model) -> Path:
    """A python-backend repository holding the families `tiny` (FocalLens) and `tinyclip`."""
    repository = tmp_path_factory.mktemp("model_repository")
    export_family(focallens_model, "focallens", TINY, "tiny", repository, "python")
    export_family(clip_model, "clip", TINY, "tinyclip", repository, "python")
    return repository


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    """The trained demo family (`make demo-model`); `make test` builds it before running tests."""
    repository = Path(__file__).resolve().parent.parent / "model_repository"
    if not (repository / "demo_image" / "1" / "model.pt").is_file():
        pytest.fail("the demo family is missing: run `make demo-model` (make test does it first)")
    return repository
