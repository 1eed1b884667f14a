"""The engine process's side of the wire: calls from every front go into one set of batchers.

Each front connects once, names its pixel region, and receives the model configs. A call carries
a batch of rows for one model; each row is submitted to that model's `DynamicBatcher` as if a
local request had made it, so batches form across all fronts, and the batcher's limits (queue
bound, stall detection) and errors are the engine's, answered to the front with their codes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_server.batching import DynamicBatcher
from focalserve_server.engine import Engine
from focalserve_server.pixel_slots import PixelSlots
from focalserve_server.workers.wire import (
    Message,
    encode,
    pack_array,
    pack_error,
    read_message,
    unpack_array,
)

logger = logging.getLogger(__name__)


class EngineServer:
    def __init__(self, engine: Engine, configs: list[pb.ModelConfig], path: Path) -> None:
        self._batchers: dict[str, DynamicBatcher] = {
            batcher.name: batcher for family in engine.families.values() for batcher in family.batchers.values()
        }
        self._configs = [config.SerializeToString() for config in configs]
        self._path = path
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; fronts connect as soon as the socket exists, so it is made only once the engine serves."""
        self._path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._path.unlink(missing_ok=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls: set[asyncio.Task[None]] = set()
        slots: PixelSlots | None = None
        try:
            hello = await read_message(reader)
            slots = PixelSlots(Path(hello["slots"]), hello["slot_bytes"], hello["slot_count"], create=False)
            writer.write(encode({"configs": self._configs}))
            while True:
                call = asyncio.create_task(self._answer(await read_message(reader), slots, writer))
                calls.add(call)
                call.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front has gone (stopped or killed): its calls are dropped with it
        finally:
            for call in list(calls):
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            if slots is not None:
                slots.close()
            writer.close()

    async def _answer(self, call: Message, slots: PixelSlots, writer: asyncio.StreamWriter) -> None:
        try:
            reply: Message = {"id": call["id"], "output": pack_array(await self._run(call, slots))}
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reply = {"id": call["id"], "error": pack_error(error)}
        if not writer.is_closing():
            writer.write(encode(reply))

    async def _run(self, call: Message, slots: PixelSlots) -> np.ndarray:
        batcher = self._batchers[call["model"]]
        columns: dict[str, np.ndarray] = {
            name: unpack_array(packed) for name, packed in call["inputs"].items()
        }
        for name, placed in call["slots"].items():
            columns[name] = slots.read(placed["first"], tuple(placed["shape"]))
        rows = [{name: column[i] for name, column in columns.items()} for i in range(call["rows"])]
        if len(rows) == 1:  # the usual call under load: no task and gather for one row
            return (await batcher.submit(rows[0]))[np.newaxis]
        return np.stack(await asyncio.gather(*(batcher.submit(row) for row in rows)))
