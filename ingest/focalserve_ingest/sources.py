"""What SOURCE names, read with Ray Data's own readers into rows of one shape: `id` (the item id,
from the source, so a rerun finds what it stored), `source` (where the image is), `metadata` (a
JSON object) and, except for manifests, whose images are read by the prepare step, `data` (the
encoded image).

A folder is read recursively, an item's id its path relative to the folder (as `focalserve index
add` names it); a manifest (Parquet, CSV, JSON Lines) names each image by a path or URL column,
relative paths being relative to the manifest, and its other columns are metadata; WebDataset
shards (`.tar`, or a folder of them) give each sample's key as its id, its image member and its
`.json` member as metadata. Local paths and the filesystems pyarrow opens (s3://, gs://) alike.
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import ray.data
from pyarrow import fs

from focalserve_client.cli import IMAGE_SUFFIXES

SourceFormat = Literal["folder", "manifest", "webdataset", "vectors"]
VECTORS_MARKER = "_focalserve.json"  # written beside the Parquet partitions of `focalserve ingest --output`
PATH_COLUMNS = ("path", "url", "uri", "image", "file")  # a manifest's image column, when not named
IMAGE_EXTENSIONS = sorted({suffix[1:] for suffix in IMAGE_SUFFIXES} | {suffix[1:].upper() for suffix in IMAGE_SUFFIXES})


class SourceError(ValueError):
    """SOURCE is not something an ingest reads; the message says why."""


def locate(source: str) -> tuple[fs.FileSystem, str]:
    """The filesystem holding SOURCE and its path there: a URI through pyarrow, else a local path."""
    if "://" in source:
        return fs.FileSystem.from_uri(source)
    return fs.LocalFileSystem(), str(Path(source).resolve())


def uri_of(filesystem: fs.FileSystem, path: str) -> str:
    """A path on `filesystem` as the URI an item records as its source."""
    return path if isinstance(filesystem, fs.LocalFileSystem) else f"{filesystem.type_name}://{path}"


def detect(source: str) -> SourceFormat:
    filesystem, path = locate(source)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise SourceError(f"{source} does not exist")
    if info.type == fs.FileType.File:
        suffix = posixpath.splitext(path)[1].lower()
        if suffix in MANIFEST_READERS:
            return "manifest"
        if suffix == ".tar":
            return "webdataset"
        raise SourceError(f"{source} is neither a manifest ({', '.join(MANIFEST_READERS)}) nor a .tar shard")
    names = {posixpath.basename(entry.path) for entry in filesystem.get_file_info(fs.FileSelector(path))}
    if VECTORS_MARKER in names:
        return "vectors"
    if any(name.endswith(".tar") for name in names):
        return "webdataset"
    return "folder"


def read_images(source: str, kind: SourceFormat, path_column: str | None, id_column: str | None) -> ray.data.Dataset:
    filesystem, path = locate(source)
    where = source if "://" in source else path  # Ray's readers find the filesystem of a URI themselves
    if kind == "folder":
        files = ray.data.read_binary_files(where, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
        return files.map_batches(functools.partial(_folder_rows, root=path, filesystem=filesystem),
                                 batch_format="numpy")
    if kind == "webdataset":
        samples = ray.data.read_webdataset(where, decoder=None)
        return samples.map_batches(_webdataset_rows, batch_format="pandas")
    if kind == "manifest":
        rows = MANIFEST_READERS[posixpath.splitext(path)[1].lower()](where)
        base = uri_of(filesystem, posixpath.dirname(path))
        return rows.map_batches(functools.partial(_manifest_rows, base=base, path_column=path_column,
                                                  id_column=id_column), batch_format="pandas")
    raise SourceError(f"{source} holds vectors, not images")


MANIFEST_READERS: dict[str, Callable[[str], ray.data.Dataset]] = {
    ".parquet": ray.data.read_parquet,
    ".csv": ray.data.read_csv,
    ".jsonl": functools.partial(ray.data.read_json, lines=True),
    ".ndjson": functools.partial(ray.data.read_json, lines=True),
}


def _folder_rows(batch: dict[str, np.ndarray], root: str, filesystem: fs.FileSystem) -> dict[str, np.ndarray]:
    paths = [str(path) for path in batch["path"]]
    return {
        "id": np.array([posixpath.relpath(path, root) for path in paths], dtype=object),
        "source": np.array([uri_of(filesystem, path) for path in paths], dtype=object),
        "metadata": np.array(["{}"] * len(paths), dtype=object),
        "data": batch["bytes"],
    }


def _webdataset_rows(batch: pd.DataFrame) -> pd.DataFrame:
    images = [column for column in batch.columns if f".{column.lower()}" in IMAGE_SUFFIXES]
    data = batch[images].bfill(axis=1).iloc[:, 0] if images else pd.Series([None] * len(batch), dtype=object)
    metadata = batch["json"] if "json" in batch.columns else pd.Series([None] * len(batch), dtype=object)
    return pd.DataFrame({
        "id": batch["__key__"].astype(str),
        "source": [f"{url}#{key}" for url, key in zip(batch["__url__"], batch["__key__"])],
        "metadata": [_scalar_metadata(json.loads(raw) if raw is not None else {}) for raw in metadata],
        "data": data.values,
    })


def _manifest_rows(batch: pd.DataFrame, base: str, path_column: str | None, id_column: str | None) -> pd.DataFrame:
    column = path_column or next((name for name in PATH_COLUMNS if name in batch.columns), None)
    if column is None or column not in batch.columns:
        raise SourceError(f"the manifest has no image column ({path_column or ' / '.join(PATH_COLUMNS)}); "
                          f"its columns: {', '.join(map(str, batch.columns))} (name one with --path-column)")
    if id_column is not None and id_column not in batch.columns:
        raise SourceError(f"the manifest has no id column {id_column!r}")
    ids = batch[id_column] if id_column is not None else batch["id"] if "id" in batch.columns else batch[column]
    others = [name for name in batch.columns if name not in {column, ids.name}]
    records = json.loads(batch[others].to_json(orient="records")) if others else [{}] * len(batch)
    return pd.DataFrame({
        "id": ids.astype(str).values,
        "source": [_resolve(str(value), base) for value in batch[column]],
        "metadata": [_scalar_metadata(record) for record in records],
    })


def _resolve(value: str, base: str) -> str:
    """A manifest's path as a URI: URLs and absolute paths as written, others relative to the manifest."""
    if "://" in value or value.startswith("/"):
        return value
    return posixpath.join(base, value)


def _scalar_metadata(record: dict[str, Any]) -> str:
    """Metadata as an item holds it: JSON scalars, anything nested kept as its JSON text."""
    return json.dumps({str(key): value if value is None or isinstance(value, (str, int, float, bool))
                       else json.dumps(value) for key, value in record.items()}, sort_keys=True)
