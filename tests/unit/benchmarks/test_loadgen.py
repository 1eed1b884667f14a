"""The closed-loop load generator against fake async senders: its bounds, error counting and percentiles."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from benchmarks.loadgen import LoadResult, run_load

# Slack for wall-clock bounds on a busy 2-core machine; the bounds tested are far tighter than a hang.
SLACK_S = 0.5


class FakeSender:
    """Answers each request after `delay_s` with `images` images; raises for numbers in `failing`."""

    def __init__(self, delay_s: float = 0.0, images: int = 1, failing: frozenset[int] = frozenset()) -> None:
        self.delay_s = delay_s
        self.images = images
        self.failing = failing
        self.numbers: list[int] = []
        self.started_at: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, number: int) -> int:
        self.numbers.append(number)
        self.started_at.append(time.perf_counter())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if number in self.failing:
                raise ValueError(f"request {number} refused")
            return self.images
        finally:
            self.in_flight -= 1


async def test_stops_at_max_requests_and_sends_each_number_once():
    send = FakeSender(images=3)
    result = await run_load(send, 4, max_requests=50, max_seconds=30)
    assert result.requests == 50 and result.errors == 0
    assert result.images == 150
    assert sorted(send.numbers) == list(range(50))
    assert result.elapsed_s < SLACK_S
    assert len(result.latencies_s) == 50


async def test_stops_sending_at_the_deadline_and_waits_for_requests_in_flight():
    send = FakeSender(delay_s=0.05)
    result = await run_load(send, 2, max_requests=1_000_000, max_seconds=0.3)
    first = send.started_at[0]
    assert all(started <= first + 0.3 + 0.05 for started in send.started_at)  # nothing sent after the deadline
    assert 2 <= result.requests <= 2 * (0.3 / 0.05 + 1)
    assert result.requests == len(send.numbers)  # every request sent was waited for and counted
    assert 0.3 <= result.elapsed_s < 0.3 + 0.05 + SLACK_S


async def test_min_requests_hold_a_slow_run_past_the_deadline_but_not_past_four_times_it():
    slow = FakeSender(delay_s=0.1)
    held = await run_load(slow, 2, max_requests=1_000, max_seconds=0.1, min_requests=6)
    assert held.requests >= 6  # three rounds of two, though each round outlasts max_seconds

    endless = FakeSender(delay_s=0.05)
    capped = await run_load(endless, 1, max_requests=1_000, max_seconds=0.1, min_requests=1_000)
    assert capped.elapsed_s < 4 * 0.1 + 0.05 + SLACK_S
    assert capped.requests < 1_000


async def test_holds_exactly_concurrency_requests_in_flight():
    send = FakeSender(delay_s=0.01)
    await run_load(send, 8, max_requests=64, max_seconds=30)
    assert send.most_in_flight == 8


async def test_counts_errors_and_keeps_the_first():
    send = FakeSender(failing=frozenset(range(1, 40, 2)))
    result = await run_load(send, 3, max_requests=40, max_seconds=30)
    assert result.errors == 20 and result.requests == 20
    assert len(result.latencies_s) == 20  # failures are not latencies
    assert result.first_error is not None and result.first_error.startswith("ValueError: request")
    assert result.summary()["errors"] == 20


async def test_warm_up_requests_are_sent_first_and_not_counted():
    send = FakeSender(failing=frozenset({0}))
    result = await run_load(send, 2, max_requests=10, max_seconds=30, warmup_requests=4)
    assert send.numbers[:4] == [0, 1, 2, 3]
    assert len(send.numbers) == 14
    assert result.requests + result.errors == 10
    assert result.errors == 1  # request 0 fails again when counted; its warm-up failure was not counted


async def test_latency_percentiles_come_from_answered_requests():
    send = FakeSender(delay_s=0.02)
    summary = (await run_load(send, 4, max_requests=20, max_seconds=30)).summary()
    assert 20.0 <= summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] < 20.0 + 1000 * SLACK_S


def test_summary_rates_and_percentiles():
    result = LoadResult(concurrency=2, elapsed_s=2.0, requests=100, images=300,
                        latencies_s=[n / 1000 for n in range(1, 101)])
    summary = result.summary()
    assert summary["images_per_s"] == 150.0 and summary["requests_per_s"] == 50.0
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p95_ms"] == pytest.approx(95.05)
    assert summary["p99_ms"] == pytest.approx(99.01)


def test_summary_of_a_run_that_answered_nothing():
    summary = LoadResult(concurrency=1).summary()
    assert summary["images_per_s"] == 0.0
    assert all(math.isnan(summary[key]) for key in ("p50_ms", "p95_ms", "p99_ms"))


@pytest.mark.parametrize("concurrency, max_requests, max_seconds", [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)])
async def test_refuses_empty_bounds(concurrency, max_requests, max_seconds):
    with pytest.raises(ValueError):
        await run_load(FakeSender(), concurrency, max_requests=max_requests, max_seconds=max_seconds)
