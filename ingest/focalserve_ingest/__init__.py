"""Bulk ingest on Ray Data: a folder, a manifest or WebDataset shards into a collection (or into
Parquet vectors), resumable, at the speed of the model rather than of the HTTP API.

The pipeline (`pipeline.py`) reads with Ray Data's readers (`sources.py`), decodes and resizes in
CPU tasks with the gateway's preprocessing (`prepare.py`), embeds in an actor pool running the
family's exported TorchScript graphs (`embedder.py`) and writes through a `Datasink` whose blocks
are one store transaction each (`sink.py`) or as Parquet partitions (`vectors.py`). `focalserve
ingest` is its command line (`cli.py`); `ingest()` is the same from Python.
"""

from focalserve_ingest.pipeline import IngestOptions, IngestSummary, ingest

__all__ = ["IngestOptions", "IngestSummary", "ingest"]
