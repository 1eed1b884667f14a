"""One local Ray cluster for the whole session (a start costs seconds) with a small object store,
and folders of generated images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from focalserve_ingest import IngestOptions, IngestSummary, ingest
from focalserve_server.config import Settings
from tests.helpers.images import shape_png

OBJECT_STORE_BYTES = 200 * 1024 * 1024
COLOUR = "what colour is it?"
SHAPE = "what shape is it?"


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The session's Ray cluster (2 CPUs, as this machine has); its GCS address for other drivers."""
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                       logging_level="warning")
    yield context.address_info["gcs_address"]
    ray.shutdown()


def colour_of(number: int) -> tuple[int, int, int]:
    return (37 * number % 256, 91 * number % 256, 53 * number % 256)


def image_folder(root: Path, count: int, corrupt: int = 0) -> Path:
    """`count` PNGs (half of them in a subfolder) and `corrupt` files that claim to be PNGs and are not."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for number in range(count):
        (root / ("sub" if number % 2 else "") / f"{number:04d}.png").write_bytes(shape_png(colour_of(number)))
    for number in range(corrupt):
        (root / f"broken-{number}.png").write_bytes(b"\x89PNG not really")
    return root


def run_ingest(source: Path | str, settings: Settings, tmp_path: Path, **options) -> IngestSummary:
    """One ingest in this process on the session's cluster; small batches and blocks, so several of each."""
    options.setdefault("report", tmp_path / "failures.jsonl")
    options.setdefault("batch_size", 16)
    options.setdefault("rows_per_write", 32)
    options.setdefault("threads_per_actor", 1)  # the other test lane has the other core
    return ingest(IngestOptions(str(source), settings=settings, **options))
