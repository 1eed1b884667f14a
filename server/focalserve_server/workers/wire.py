"""The wire between the front processes and the engine process: framing, arrays, errors, and the
directory they share.

One Unix stream socket per front. A message is a 4-byte big-endian length and a msgpack map.
Small arrays (tokens, conditions, embeddings) travel inline as raw bytes with dtype and shape;
images never do: a front writes a call's uint8 pixels into slots of its own shared-memory region
(`pixel_slots`, pre-allocated at start) and sends where, and the engine reads them in place.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from focalserve_server.errors import FocalServeError

_LENGTH = struct.Struct(">I")
MAX_MESSAGE_BYTES = 1 << 30  # a corrupt length must not become an allocation of gigabytes

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` when the other side has gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_MESSAGE_BYTES:
        raise ConnectionError(f"a message of {length} bytes: the stream is corrupt")
    message: Message = msgpack.unpackb(await reader.readexactly(length), raw=False)
    return message


def pack_array(array: np.ndarray) -> Message:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(packed: Message) -> np.ndarray:
    return np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])


def pack_error(error: BaseException) -> Message:
    if isinstance(error, FocalServeError):
        return {"code": error.code, "message": error.message}
    return {"code": "internal_error", "message": f"{type(error).__name__}: {error}"}


def unpack_error(packed: Message) -> Exception:
    """The engine's error as the same domain error here (a 503 stays a 503 with its code); anything
    else as a plain exception, which the batcher isolates to the item that caused it."""
    kind = _ERROR_CLASSES.get(packed["code"])
    return kind(packed["message"]) if kind is not None else RuntimeError(packed["message"])


def _error_classes(root: type[FocalServeError]) -> dict[str, type[FocalServeError]]:
    classes: dict[str, type[FocalServeError]] = {}
    for kind in root.__subclasses__():
        classes[kind.code] = kind
        classes.update(_error_classes(kind))
    return classes


_ERROR_CLASSES = _error_classes(FocalServeError)


@dataclass(frozen=True)
class Runtime:
    """The directory the processes of one `--workers N` gateway share (on a tmpfs where there is one):
    the engine's sockets, the fronts' pixel regions, the metrics files and each process's pid."""

    directory: Path

    @property
    def engine_socket(self) -> Path:
        return self.directory / "engine.sock"  # model calls from the fronts

    @property
    def http_socket(self) -> Path:
        return self.directory / "http.sock"  # the engine's HTTP API, where fronts forward collection routes

    @property
    def metrics(self) -> Path:
        return self.directory / "metrics"

    def pixels(self, pid: int) -> Path:
        return self.directory / f"pixels-{pid}"

    def pid_file(self, role: str) -> Path:
        return self.directory / f"{role}.pid"
