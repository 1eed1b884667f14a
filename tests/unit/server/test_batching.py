"""DynamicBatcher against a fake batch runner: batching, per-item results, failures, shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from focalserve_server.batching import DynamicBatcher
from focalserve_server.errors import BackendUnavailable, Overloaded
from tests.helpers.loop import wait_until

POISON = -1.0
# Upper bound for awaits that a correct batcher completes at once; it only keeps a bug from hanging.
BOUND_S = 2.0


class FakeBatchRunner:
    """A fake batch runner (batcher unit tests only): returns inputs * 2, held at `gate` until set.

    Rows holding POISON make the whole call raise ValueError, as a backend rejecting one bad item.
    """

    def __init__(self, *, hold: bool = False, error: Exception | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.error = error

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]

    @property
    def rows_run(self) -> list[float]:
        return [float(row[0]) for call in self.calls for row in call]

    async def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = inputs["x"]
        self.calls.append(x.copy())
        self.entered.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        if (x == POISON).any():
            raise ValueError("poisoned row in batch")
        return x * 2


def item(value: float) -> dict[str, np.ndarray]:
    return {"x": np.array([value, value + 0.5], dtype=np.float32)}


def queue(batcher: DynamicBatcher, values: list[float]) -> list[asyncio.Task[np.ndarray]]:
    return [asyncio.create_task(batcher.submit(item(v))) for v in values]


@pytest.fixture
async def make_batcher():
    made: list[DynamicBatcher] = []

    def make(run, *, max_batch_size=8, max_delay_ms=0.0, max_queue_size=100, on_batch=None, start=True):
        batcher = DynamicBatcher("fake", run, max_batch_size, max_delay_ms, max_queue_size, on_batch)
        if start:
            batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        # A worker that died re-raises here; the test that killed it already reports why.
        with contextlib.suppress(Exception):
            await batcher.stop()


async def test_concurrent_submits_form_batches_no_larger_than_max(make_batcher):
    runner = FakeBatchRunner(hold=True)
    sizes: list[int] = []
    batcher = make_batcher(runner, max_batch_size=8, on_batch=sizes.append)
    tasks = queue(batcher, list(range(20)))
    await runner.entered.wait()
    first = runner.sizes[0]
    await wait_until(lambda: batcher.queue_depth == 20 - first)  # the held call lets the queue fill
    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)

    assert len(results) == 20
    assert all(size <= 8 for size in runner.sizes)
    assert sum(runner.sizes) == 20
    assert len(runner.calls) < 20
    assert 8 in runner.sizes  # after the held call, at least 12 items were waiting
    assert sizes == runner.sizes


async def test_each_caller_gets_its_own_row(make_batcher):
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, max_batch_size=4)
    values = [float(v) for v in range(11)]
    tasks = queue(batcher, values)
    await runner.entered.wait()
    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)

    for value, result in zip(values, results, strict=True):
        np.testing.assert_array_equal(result, item(value)["x"] * 2)
    assert runner.rows_run == values  # submission order is kept across batches


async def test_rows_are_stacked_along_a_new_batch_dimension(make_batcher):
    runner = FakeBatchRunner()
    batcher = make_batcher(runner, start=False)
    tasks = queue(batcher, [1.0, 2.0, 3.0])
    await wait_until(lambda: batcher.queue_depth == 3)
    batcher.start()
    await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)

    assert len(runner.calls) == 1
    assert runner.calls[0].shape == (3, 2)
    assert runner.calls[0].dtype == np.float32


async def test_a_lone_item_goes_at_once_instead_of_waiting_for_max_delay(make_batcher):
    runner = FakeBatchRunner()
    # A delay far beyond BOUND_S: one client alone must see the model's latency, not the window.
    batcher = make_batcher(runner, max_batch_size=8, max_delay_ms=600_000)
    result = await asyncio.wait_for(batcher.submit(item(3.0)), BOUND_S)

    np.testing.assert_array_equal(result, item(3.0)["x"] * 2)
    assert runner.sizes == [1]


async def test_under_concurrency_a_lone_item_waits_to_be_batched(make_batcher):
    runner = FakeBatchRunner()
    batcher = make_batcher(runner, max_batch_size=2, max_delay_ms=600_000)
    await asyncio.wait_for(asyncio.gather(*queue(batcher, [0.0, 1.0])), BOUND_S)  # a batch of two: load
    (lone,) = queue(batcher, [2.0])
    await wait_until(lambda: batcher.queue_depth == 1)
    await wait_until(lambda: batcher.queue_depth == 0)  # taken, and held while the batch fills
    assert runner.sizes == [2]

    (second,) = queue(batcher, [3.0])
    await asyncio.wait_for(asyncio.gather(lone, second), BOUND_S)
    assert runner.sizes == [2, 2]


async def test_full_batch_does_not_wait_for_max_delay(make_batcher):
    runner = FakeBatchRunner()
    # A delay far beyond BOUND_S: the batch must leave as soon as it is full.
    batcher = make_batcher(runner, max_batch_size=4, max_delay_ms=600_000)
    tasks = queue(batcher, [0.0, 1.0, 2.0, 3.0])
    await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)

    assert runner.sizes == [4]


async def test_failing_input_fails_only_its_own_request(make_batcher):
    runner = FakeBatchRunner()
    sizes: list[int] = []
    batcher = make_batcher(runner, max_batch_size=8, on_batch=sizes.append, start=False)
    values = [1.0, 2.0, POISON, 4.0, 5.0]
    tasks = queue(batcher, values)
    await wait_until(lambda: batcher.queue_depth == len(values))
    batcher.start()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND_S)

    assert runner.sizes[0] == 5  # all five really shared the failing call
    assert isinstance(results[2], ValueError)
    for value, result in zip(values, results, strict=True):
        if value != POISON:
            np.testing.assert_array_equal(result, item(value)["x"] * 2)
    assert sum(sizes) == 4  # only successful calls are reported


async def test_backend_unavailable_fails_whole_batch_without_retries(make_batcher):
    runner = FakeBatchRunner(error=BackendUnavailable("triton is down"))
    batcher = make_batcher(runner, start=False)
    tasks = queue(batcher, [1.0, 2.0, 3.0])
    await wait_until(lambda: batcher.queue_depth == 3)
    batcher.start()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND_S)

    assert all(isinstance(result, BackendUnavailable) for result in results)
    assert runner.sizes == [3]  # one call, no item-by-item retries


async def test_batcher_keeps_serving_after_backend_unavailable(make_batcher):
    runner = FakeBatchRunner(error=BackendUnavailable("triton is down"))
    sizes: list[int] = []
    batcher = make_batcher(runner, on_batch=sizes.append)
    batcher.last_progress = 0.0
    with pytest.raises(BackendUnavailable):
        await asyncio.wait_for(batcher.submit(item(1.0)), BOUND_S)
    assert batcher.running

    runner.error = None  # the backend is back
    later = asyncio.create_task(batcher.submit(item(2.0)))
    try:
        await wait_until(later.done)
        np.testing.assert_array_equal(later.result(), item(2.0)["x"] * 2)
    finally:
        later.cancel()
    assert sizes == [1]  # only the call that succeeded is a completed batch


async def test_full_queue_refuses_at_once_with_overloaded(make_batcher):
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, max_batch_size=1, max_queue_size=3)
    held = queue(batcher, [0.0])
    await runner.entered.wait()  # the worker holds item 0; the queue is empty again
    waiting = queue(batcher, [1.0, 2.0, 3.0])
    await wait_until(lambda: batcher.queue_depth == 3)

    refused = asyncio.create_task(batcher.submit(item(4.0)))
    await asyncio.sleep(0)  # one step: it must not wait for room
    assert refused.done()
    with pytest.raises(Overloaded) as caught:
        refused.result()
    assert caught.value.status == 503

    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*held, *waiting), BOUND_S)
    assert len(results) == 4
    assert 4.0 not in runner.rows_run


async def test_cancelled_caller_is_dropped_and_others_succeed(make_batcher):
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, max_batch_size=8)
    held = queue(batcher, [0.0])
    await runner.entered.wait()
    waiting = queue(batcher, [1.0, 2.0, 3.0])
    await wait_until(lambda: batcher.queue_depth == 3)

    waiting[1].cancel()
    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*held, *waiting, return_exceptions=True), BOUND_S)

    assert isinstance(results[2], asyncio.CancelledError)
    for value, result in zip([0.0, 1.0, 3.0], [results[0], results[1], results[3]], strict=True):
        np.testing.assert_array_equal(result, item(value)["x"] * 2)
    assert 2.0 not in runner.rows_run
    assert batcher.running
    later = await asyncio.wait_for(batcher.submit(item(9.0)), BOUND_S)
    np.testing.assert_array_equal(later, item(9.0)["x"] * 2)


async def test_caller_cancelled_during_its_call_does_not_break_the_batcher(make_batcher):
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, start=False)
    tasks = queue(batcher, [1.0, 2.0])
    await wait_until(lambda: batcher.queue_depth == 2)
    batcher.start()
    await runner.entered.wait()
    tasks[0].cancel()
    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND_S)

    assert isinstance(results[0], asyncio.CancelledError)
    np.testing.assert_array_equal(results[1], item(2.0)["x"] * 2)
    assert batcher.running


async def test_stop_fails_queued_items_and_stops_the_worker(make_batcher):
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, max_batch_size=1)
    held = queue(batcher, [0.0])
    await runner.entered.wait()
    waiting = queue(batcher, [1.0, 2.0])
    await wait_until(lambda: batcher.queue_depth == 2)
    assert batcher.running

    await batcher.stop()

    assert not batcher.running
    assert batcher.queue_depth == 0
    for task in waiting:
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(task, BOUND_S)
    held[0].cancel()  # the in-flight item is the subject of the next test


@pytest.mark.parametrize("stage", ["gathering", "running"])
async def test_stop_fails_items_the_worker_already_took(make_batcher, stage):
    """An item taken off the queue but not answered must not leave its caller waiting forever."""
    runner = FakeBatchRunner(hold=stage == "running")
    # In "gathering" the worker holds two items while waiting (a long time) for the batch to fill.
    delay_ms = 600_000 if stage == "gathering" else 0
    batcher = make_batcher(runner, max_batch_size=8, max_delay_ms=delay_ms)
    tasks = queue(batcher, [1.0] if stage == "running" else [1.0, 2.0])
    if stage == "running":
        await runner.entered.wait()
    else:
        await wait_until(lambda: batcher.queue_depth == 2)  # submitted ...
        await wait_until(lambda: batcher.queue_depth == 0)  # ... and taken by the worker
        assert not runner.calls

    await batcher.stop()

    assert not batcher.running
    try:
        for task in tasks:
            await wait_until(task.done, steps=100)  # stop() itself must answer the caller
            with pytest.raises(BackendUnavailable):
                task.result()
    finally:
        for task in tasks:
            task.cancel()


async def test_start_is_idempotent_and_stop_without_start_is_harmless(make_batcher):
    runner = FakeBatchRunner()
    idle = make_batcher(runner, start=False)
    assert not idle.running
    await idle.stop()

    batcher = make_batcher(runner)
    batcher.start()
    result = await asyncio.wait_for(batcher.submit(item(1.0)), BOUND_S)
    np.testing.assert_array_equal(result, item(1.0)["x"] * 2)
    assert runner.sizes == [1]


async def test_last_progress_advances_after_a_batch(make_batcher):
    runner = FakeBatchRunner()
    batcher = make_batcher(runner)
    batcher.last_progress = 0.0
    await asyncio.wait_for(batcher.submit(item(1.0)), BOUND_S)
    assert batcher.last_progress > 0.0
    assert batcher.queue_depth == 0


async def test_max_inflight_lets_several_batches_run_at_once():
    """Triton overlaps batches of one model; the batcher must not serialise them."""
    running, peak, release = 0, 0, asyncio.Event()

    async def fake_run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return inputs["x"] * 2

    batcher = DynamicBatcher("overlap", fake_run, max_batch_size=1, max_delay_ms=0, max_queue_size=16, max_inflight=3)
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit({"x": np.array([i], np.float32)})) for i in range(5)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert peak == 3  # three in flight, the other two wait for a slot
    release.set()
    results = await asyncio.gather(*tasks)
    assert [float(r[0]) for r in results] == [0, 2, 4, 6, 8]
    await batcher.stop()


async def test_items_whose_first_axis_varies_are_padded_into_one_call_and_cut_back(make_batcher):
    """A readout image with K conditions: one call, zero rows added to the shorter items, and each
    caller gets exactly its own K rows back."""
    runner = FakeBatchRunner(hold=True)
    batcher = make_batcher(runner, max_batch_size=8)
    blocker = queue(batcher, [100.0])  # holds the runner while the others queue up
    await runner.entered.wait()
    lists = [np.arange(k * 2, dtype=np.float32).reshape(k, 2) + 10 * k for k in (1, 3, 2)]
    tasks = [asyncio.create_task(batcher.submit({"x": conditions})) for conditions in lists]
    await wait_until(lambda: batcher.queue_depth == 3)
    runner.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)
    await asyncio.wait_for(asyncio.gather(*blocker), BOUND_S)

    assert runner.calls[1].shape == (3, 3, 2)  # one call, every item padded to K = 3
    assert runner.calls[1][0, 1:].sum() == 0
    for conditions, result in zip(lists, results, strict=True):
        np.testing.assert_array_equal(result, conditions * 2)
