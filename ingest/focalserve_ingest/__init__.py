"""Bulk ingest on Ray Data: a folder, a manifest or WebDataset shards into a collection (or into
Parquet vectors), resumable, at the speed of the model rather than of the HTTP API.

The pipeline (`pipeline.py`) reads with Ray Data's readers (`sources.py`), decodes and resizes in
CPU tasks with the gateway's preprocessing (`prepare.py`), embeds in an actor pool running the
family's exported TorchScript graphs (`embedder.py`) and writes through a `Datasink` whose blocks
are one store transaction each (`sink.py`) or as Parquet partitions (`vectors.py`). `focalserve
ingest` is its command line (`cli.py`); `ingest()` is the same from Python.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IngestOptions", "IngestSummary", "ingest"]


def __getattr__(name: str) -> Any:
    """The pipeline (Ray, torch, the store) is imported on first use: `focalserve --help` loads this
    package to register `ingest` and must stay fast."""
    if name in __all__:
        from focalserve_ingest import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
