"""Dynamic batching: one batcher per Triton model gathers items into backend calls.

Each submitted item carries a future. A worker task takes the first waiting item, then keeps
gathering until `max_batch_size` items or `max_delay_ms` have passed, stacks the inputs, makes
one backend call and completes the futures. The delay is only paid under concurrency: a lone
item with nothing else waiting, right after a batch of one, goes at once, so a single client
sees the model's latency, not the batching window. The queue is bounded: a full queue refuses new
items at once (503 + Retry-After upstream) instead of letting latency grow without limit.

An input whose first axis differs between items (a readout family's conditions: one image with
K of them) is zero-padded to the batch's longest, and each item's output row is cut back to its
own length, so items asking different numbers of conditions still share one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from focalserve_server.errors import BackendUnavailable, Overloaded

logger = logging.getLogger(__name__)

BatchRunner = Callable[[dict[str, np.ndarray]], Awaitable[np.ndarray]]


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    future: asyncio.Future[np.ndarray] = field(repr=False)


class DynamicBatcher:
    """Merges concurrent single-item requests into batched calls of `run`."""

    def __init__(
        self,
        name: str,
        run: BatchRunner,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue_size: int,
        on_batch: Callable[[int], None] | None = None,
        max_inflight: int = 1,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self._max_delay = max_delay_ms / 1000
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue_size)
        self._on_batch = on_batch
        self._on_reject = on_reject
        self._worker: asyncio.Task[None] | None = None
        self._held: list[_Item] = []  # the batch being gathered
        self._slots = asyncio.Semaphore(max_inflight)  # batches running at once
        self._inflight: dict[asyncio.Task[None], list[_Item]] = {}
        self._started: dict[asyncio.Task[None], float] = {}  # when each running batch began
        self._last_pickup = time.monotonic()  # when the worker last took an item from the queue
        self._concurrent = False  # did the last batch hold more than one item?
        self.last_progress = time.monotonic()  # when a batch last completed, for readiness

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def stalled(self, timeout_s: float) -> bool:
        """A batch has run, or items have waited unpicked, for longer than `timeout_s`:
        the process is up but the model makes no progress (readiness must fail)."""
        now = time.monotonic()
        if any(now - started > timeout_s for started in self._started.values()):
            return True
        return not self._queue.empty() and now - self._last_pickup > timeout_s

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        running = [item for batch in self._inflight.values() for item in batch]
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        waiting = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        _fail(self._held + running + waiting, BackendUnavailable(f"{self.name} is shutting down"))
        self._held = []

    async def submit(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Queue one item (arrays without the batch dimension) and wait for its output row."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(inputs, future))
        except asyncio.QueueFull:
            if self._on_reject is not None:
                self._on_reject()
            raise Overloaded(f"{self.name}: queue full ({self._queue.maxsize} items)") from None
        return await future

    async def _work(self) -> None:
        """Gather a batch whenever a slot is free; up to `max_inflight` batches run at once
        (1 for an in-process model; more for Triton, whose own scheduler overlaps them)."""
        while True:
            await self._slots.acquire()
            batch = await self._gather()
            self._held = []
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._inflight[task] = batch
            self._started[task] = time.monotonic()
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._started.pop(task, None)
        self._slots.release()

    async def _gather(self) -> list[_Item]:
        batch = self._held = [await self._queue.get()]
        self._last_pickup = time.monotonic()
        alone = self._queue.empty() and not self._concurrent
        deadline = time.monotonic() + (0.0 if alone else self._max_delay)
        while len(batch) < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        self._concurrent = len(batch) > 1
        self._held = [item for item in batch if not item.future.done()]  # drop cancelled callers
        return self._held

    async def _execute(self, batch: list[_Item]) -> None:
        inputs, lengths = _stack(batch)
        try:
            outputs = await self._run(inputs)
        except BackendUnavailable as error:
            _fail(batch, error)
            return
        except Exception as error:
            if len(batch) == 1:
                _fail(batch, error)
            else:  # isolate the item(s) that broke the batch; the others still get answers
                logger.warning("%s: batch of %d failed (%s); retrying items one by one", self.name, len(batch), error)
                for item in batch:
                    await self._execute([item])
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        self.last_progress = time.monotonic()
        for item, row, length in zip(batch, outputs, lengths):
            if not item.future.done():
                item.future.set_result(row if length is None else row[:length])


def _stack(batch: list[_Item]) -> tuple[dict[str, np.ndarray], list[int | None]]:
    """The batch's inputs stacked, and each item's own length where an input's first axis varies."""
    stacked: dict[str, np.ndarray] = {}
    lengths: list[int | None] = [None] * len(batch)
    for name in batch[0].inputs:
        arrays = [item.inputs[name] for item in batch]
        if len({array.shape for array in arrays}) > 1:
            longest = max(array.shape[0] for array in arrays)
            lengths = [array.shape[0] for array in arrays]
            arrays = [np.pad(array, [(0, longest - array.shape[0])] + [(0, 0)] * (array.ndim - 1)) for array in arrays]
        stacked[name] = np.stack(arrays)
    return stacked, lengths


def _fail(batch: list[_Item], error: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)
