"""The CPU step: skip what is stored, read, check, decode and resize each image with the gateway's
own code (`focalserve_server.images`), so an ingested vector is the one `POST /embed` answers.

A failure (unreadable, not an image, too large, a bad id) is not an exception: the row goes on with
its message in `error` and no pixels, the actors leave it out and the sink lists it in the report;
with `strict`, the first one fails the run instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from pyarrow import fs

from focalserve_client.schemas import ITEM_ID_PATTERN
from focalserve_family import FamilyMetadata
from focalserve_ingest.stores import StoreAddress
from focalserve_server.errors import FocalServeError
from focalserve_server.images import ImagePreprocessor, decode_image

FETCH_TIMEOUT_S = 30.0  # one image over HTTP(S)
ITEM_ID = re.compile(ITEM_ID_PATTERN)


class IngestFailed(RuntimeError):
    """`--strict`: an image failed, and so does the run."""


@dataclass(frozen=True)
class Skip:
    """Ids of `collection` stored with a vector under every one of `conditions` are left out."""

    store: StoreAddress
    collection: str
    conditions: tuple[int, ...]


@dataclass(frozen=True)
class PrepareConfig:
    family: FamilyMetadata
    max_image_bytes: int
    max_image_pixels: int
    keep_images: bool
    strict: bool
    skip: Skip | None  # None when writing Parquet vectors: nothing is stored to skip


def prepare_images(batch: dict[str, np.ndarray], config: PrepareConfig, tally: Any) -> dict[str, np.ndarray]:
    """Rows of a source (`sources.py`) -> the rows the actors embed: id, source, metadata, digest,
    error, pixels (uint8, zeros where `error`) and, when images are kept, image."""
    ids = [str(value) for value in batch["id"]]
    todo = list(range(len(ids)))
    if config.skip is not None:
        stored = config.skip.store.open().complete_ids(config.skip.collection, ids, config.skip.conditions)
        todo = [row for row in todo if ids[row] not in stored]
        if stored:
            tally.add.remote("stored", len(ids) - len(todo))
    preprocess = ImagePreprocessor(config.family)
    size = config.family.image_size
    pixels = np.zeros((len(todo), 3, size, size), np.uint8)
    errors, digests, images = [""] * len(todo), [""] * len(todo), [b""] * len(todo)
    for out, row in enumerate(todo):
        data = batch["data"][row] if "data" in batch else None
        try:
            if not ITEM_ID.match(ids[row]):
                raise ValueError(f"{ids[row]!r} is not a valid item id (pattern {ITEM_ID_PATTERN})")
            if data is None:
                data = read_image_bytes(str(batch["source"][row]), config.max_image_bytes)
            image = decode_image(data, config.max_image_bytes, config.max_image_pixels, preprocess.decode_size)
            pixels[out] = preprocess(image)
        except (FocalServeError, OSError, ValueError, httpx.HTTPError) as error:
            message = error.message if isinstance(error, FocalServeError) else f"{type(error).__name__}: {error}"
            if config.strict:
                raise IngestFailed(f"{batch['source'][row]}: {message}") from None
            errors[out] = message
            continue
        digests[out] = hashlib.sha256(data).hexdigest()
        images[out] = bytes(data) if config.keep_images else b""
    prepared = {
        "id": np.array([ids[row] for row in todo], dtype=object),
        "source": np.array([str(batch["source"][row]) for row in todo], dtype=object),
        "metadata": np.array([str(batch["metadata"][row]) for row in todo], dtype=object),
        "digest": np.array(digests, dtype=object),
        "error": np.array(errors, dtype=object),
        "pixels": pixels,
    }
    if config.keep_images:
        prepared["image"] = np.array(images, dtype=object)
    return prepared


def read_image_bytes(uri: str, max_bytes: int) -> bytes:
    """A manifest's image: over HTTP(S) (streamed, refused past `max_bytes`), else from the
    filesystem its URI or path names."""
    if uri.startswith(("http://", "https://")):
        with httpx.stream("GET", uri, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ValueError(f"the image is larger than {max_bytes} bytes")
            return bytes(body)
    filesystem, path = fs.FileSystem.from_uri(uri) if "://" in uri else (fs.LocalFileSystem(), uri)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read(max_bytes + 1))
