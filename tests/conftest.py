"""Session fixtures: one exported tiny FocalLens family and one CLIP family, one tritonserver, one
PostgreSQL server."""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from focalserve_devtools.launch import LocalTriton
from focalserve_devtools.postgres import LocalPostgres
from focalserve_training.export import export_family
from tests.helpers.models import TINY, tiny_clip, tiny_focallens


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests on the trained demo family, so `-m "not demo_family"` runs without exporting it."""
    for item in items:
        if "demo_repository" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.demo_family)


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
def readout_model():
    return tiny_focallens(seed=1, conditioning="readout")


@pytest.fixture(scope="session")
def readout_repository(tmp_path_factory, readout_model, focallens_model) -> Path:
    """A python-backend repository holding `tinyreadout` (FocalLens, readout conditioning) beside
    `tiny` (FocalLens, full conditioning)."""
    repository = tmp_path_factory.mktemp("readout_repository")
    export_family(readout_model, "focallens", TINY, "tinyreadout", repository, "python")
    export_family(focallens_model, "focallens", TINY, "tiny", repository, "python")
    return repository


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    """The trained demo family, exported from its shipped parameters (`make demo-repository`; `make
    test` exports it, then runs the tests marked demo_family)."""
    repository = Path(__file__).resolve().parent.parent / "model_repository"
    if not (repository / "demo_image" / "1" / "model.pt").is_file():
        pytest.fail("the demo family is missing: run `make demo-repository` (make test does it first)")
    return repository


@pytest.fixture(scope="session")
def shared_triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """One tritonserver (CPU, python backend) over `model_repository` for the whole session.

    Each start costs ~25 s of both cores (one python-backend stub per model, each importing
    torch), so tests share it; use it through `triton`, which restarts it if a test killed it.
    """
    server = LocalTriton.on_free_ports(model_repository, tmp_path_factory.mktemp("triton"))
    server.start()
    yield server
    server.kill()  # nothing to flush, and SIGTERM waits seconds for the stubs


@pytest.fixture
def triton(shared_triton: LocalTriton) -> Iterator[LocalTriton]:
    """The shared tritonserver, running; afterwards never left stopped (SIGSTOP) by a failed test."""
    if shared_triton.process is None or shared_triton.process.poll() is not None:
        shared_triton.start()  # a test killed it and failed before restarting it
    yield shared_triton
    if shared_triton.process is not None and shared_triton.process.poll() is None:
        shared_triton.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One private PostgreSQL 15 on 127.0.0.1 for the session; tests isolate by database, not by server."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards (best effort: a failed drop must not fail the test)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    with contextlib.suppress(psycopg.Error):  # the test may have stopped the server; it goes at session end anyway
        postgres_server.drop_database(name)
