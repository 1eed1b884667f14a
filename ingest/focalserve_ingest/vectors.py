"""Vectors without a collection (`focalserve ingest SOURCE --output DIR`): Parquet partitions with
one row per image (`id`, `source`, `metadata` as JSON text, `image_sha256`) and one vector column
per condition (`vector_0`, ... as float32 lists), the layout clip-retrieval's users load with any
Parquet reader. `_focalserve.json` beside them names the family, its checkpoint and each column's
instruction, so `focalserve ingest DIR --collection NAME` loads them without running the model,
and refuses vectors of another checkpoint.
"""

from __future__ import annotations

import functools
import json
import posixpath
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from pyarrow import fs

from focalserve_family import FamilySpec
from focalserve_ingest.sink import RowsSink, Written
from focalserve_ingest.sources import VECTORS_MARKER, SourceError, locate


@dataclass(frozen=True)
class VectorsManifest:
    model: str
    checkpoint_hash: str
    embedding_dim: int
    conditions: list[str | None]  # the instruction of `vector_<i>`

    @classmethod
    def of(cls, spec: FamilySpec, conditions: list[str | None]) -> VectorsManifest:
        return cls(spec.name, spec.checkpoint_hash, spec.embedding_dim, conditions)

    def write(self, output: str) -> None:
        """Into a new or empty folder: partitions of two runs in one folder would hold images twice."""
        filesystem, path = locate(output)
        if filesystem.get_file_info(path).type != fs.FileType.NotFound and \
                filesystem.get_file_info(fs.FileSelector(path)):
            raise SourceError(f"{output} is not empty: write vectors into a new folder")
        filesystem.create_dir(path, recursive=True)
        with filesystem.open_output_stream(posixpath.join(path, VECTORS_MARKER)) as stream:
            stream.write(json.dumps({**asdict(self), "columns": vector_columns(len(self.conditions))}, indent=1)
                         .encode())

    @classmethod
    def read(cls, source: str) -> VectorsManifest:
        filesystem, path = locate(source)
        with filesystem.open_input_stream(posixpath.join(path, VECTORS_MARKER)) as stream:
            record = json.loads(stream.read())
        return cls(record["model"], record["checkpoint_hash"], record["embedding_dim"], record["conditions"])


def vector_columns(count: int) -> list[str]:
    return [f"vector_{number}" for number in range(count)]


class ParquetSink(RowsSink):
    """Each write task's embedded rows as one Parquet file of the output folder."""

    def __init__(self, output: str, rows_per_write: int) -> None:
        super().__init__(rows_per_write)
        self._output = output

    def get_name(self) -> str:
        return "WriteVectors"

    def _store(self, rows: list[dict[str, Any]], written: Written) -> None:
        vectors = np.stack([row["vectors"] for row in rows])
        columns: dict[str, Any] = {
            "id": [str(row["id"]) for row in rows],
            "source": [str(row["source"]) for row in rows],
            "metadata": [str(row["metadata"]) for row in rows],
            "image_sha256": [str(row["digest"]) for row in rows],
        }
        dim = vectors.shape[-1]
        for number, name in enumerate(vector_columns(vectors.shape[1])):
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(vectors[:, number].reshape(-1)), dim)
        filesystem, path = locate(self._output)
        name = posixpath.join(path, f"part-{uuid.uuid4().hex}.parquet")
        pq.write_table(pa.table(columns), name, filesystem=filesystem)
        written.items, written.vectors = len(rows), vectors.shape[0] * vectors.shape[1]


def read_vectors(source: str, manifest: VectorsManifest, wanted: list[str | None]) -> ray.data.Dataset:
    """An output folder's rows as an ingest's embedded rows, `vectors` in the order of `wanted`
    (the collection's conditions, each of which the output must hold)."""
    missing = [text for text in wanted if text not in manifest.conditions]
    if missing:
        raise SourceError(f"{source} holds no vectors under {missing}: ingest the images themselves, or register "
                          f"only what it holds ({manifest.conditions})")
    columns = [vector_columns(len(manifest.conditions))[manifest.conditions.index(text)] for text in wanted]
    filesystem, path = locate(source)
    parts = ray.data.read_parquet(path, filesystem=filesystem, file_extensions=["parquet"])
    return parts.map_batches(functools.partial(_embedded_rows, columns=columns), batch_format="pyarrow")


def _embedded_rows(batch: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    vectors = np.stack([np.stack(batch[name].to_numpy(zero_copy_only=False)) for name in columns], axis=1)
    return {
        "id": batch["id"].to_numpy(zero_copy_only=False),
        "source": batch["source"].to_numpy(zero_copy_only=False),
        "metadata": batch["metadata"].to_numpy(zero_copy_only=False),
        "digest": batch["image_sha256"].to_numpy(zero_copy_only=False),
        "error": np.array([""] * batch.num_rows, dtype=object),
        "vectors": vectors.astype(np.float32),
    }
