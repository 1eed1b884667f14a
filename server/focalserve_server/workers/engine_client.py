"""The front's side of the wire: a `ModelBackend` whose models run in the engine process.

The front's batchers hand it what is queued at one moment (they wait no batching window: the
engine's batchers gather across all fronts). Images go into this front's pixel slots; the call
carries their numbers. While the engine is away (killed, restarting) every call fails at once
with 503 `backend_unavailable`, calls in flight included, and the client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_server.backends.base import ModelBackend
from focalserve_server.errors import BackendUnavailable
from focalserve_server.pixel_slots import PixelSlots
from focalserve_server.workers.wire import (
    Message,
    encode,
    pack_array,
    read_message,
    unpack_array,
    unpack_error,
)

logger = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 0.1


class EngineClient(ModelBackend):
    name = "engine"
    max_inflight = 1024  # calls are cheap to have in flight: the engine's own batchers bound the work
    batches_here = False

    def __init__(self, socket_path: Path, slots: PixelSlots, startup_timeout_s: float) -> None:
        self._socket_path = socket_path
        self._slots = slots
        self._startup_timeout_s = startup_timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._configs: list[pb.ModelConfig] = []
        self._pending: dict[int, tuple[asyncio.Future[np.ndarray], tuple[int, int]]] = {}  # future, (first, count)
        self._ids = itertools.count()
        self._connection: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Connect, waiting (bounded) for the engine process to load its models."""
        self._connection = asyncio.create_task(self._stay_connected(), name="engine-connection")
        try:
            await asyncio.wait_for(self._connected.wait(), self._startup_timeout_s)
        except TimeoutError:
            waited = f"{self._startup_timeout_s:g} s"
            raise BackendUnavailable(f"the engine process did not answer within {waited}") from None

    async def model_configs(self) -> list[pb.ModelConfig]:
        return list(self._configs)

    async def ready(self) -> bool:
        return self._writer is not None

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        images = {name: array for name, array in inputs.items() if array.dtype == np.uint8}
        sizes = {name: self._slots.slots_for(array) for name, array in images.items()}
        count = sum(sizes.values())
        taken = (await self._slots.take(count) if count else 0, count)
        writer = self._writer
        if writer is None:
            self._slots.give_back(*taken)
            raise BackendUnavailable("the engine process is unavailable (restarting); retry shortly")
        placed: Message = {}
        first = taken[0]
        for name, array in images.items():
            self._slots.write(first, array)
            placed[name] = {"first": first, "shape": list(array.shape)}
            first += sizes[name]
        rows = len(next(iter(inputs.values())))
        call_id = next(self._ids)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, taken)
        small = {name: pack_array(array) for name, array in inputs.items() if name not in images}
        writer.write(encode({"id": call_id, "model": model, "rows": rows, "inputs": small, "slots": placed}))
        return await future  # the slots come back with the answer, even if this caller gave up

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection
        self._slots.close()

    async def _stay_connected(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._socket_path))
            except OSError:
                await asyncio.sleep(RECONNECT_INTERVAL_S)
                continue
            try:
                await self._session(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                logger.warning("lost the engine process (%s); reconnecting", type(error).__name__)
            finally:
                self._writer = None
                writer.close()
                self._fail_pending()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slots = self._slots
        writer.write(encode({"slots": str(slots.path), "slot_bytes": slots.slot_bytes, "slot_count": slots.count}))
        hello = await read_message(reader)
        self._configs = [pb.ModelConfig.FromString(data) for data in hello["configs"]]
        self._writer = writer
        self._connected.set()
        while True:
            self._answered(await read_message(reader))

    def _answered(self, reply: Message) -> None:
        future, taken = self._pending.pop(reply["id"])
        self._slots.give_back(*taken)
        if future.done():
            return
        if "error" in reply:
            future.set_exception(unpack_error(reply["error"]))
        else:
            future.set_result(unpack_array(reply["output"]))

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future, taken in pending.values():
            self._slots.give_back(*taken)
            if not future.done():
                future.set_exception(BackendUnavailable("the engine process went away during the call; retry"))
