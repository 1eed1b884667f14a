"""(a) The limit: the exported TorchScript image forward in-process, at its best batch size.

Pixels are preprocessed and the condition is encoded once, before timing, so this measures
the image model alone: what no server in front of it can beat on the same cores.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypedDict

import torch

from benchmarks.report import percentiles_ms
from benchmarks.scripted import ScriptedFamily
from benchmarks.workload import PHRASINGS, Workload

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# TorchScript's profiling executor optimises a graph on its second run. On CUDA it does so again
# for every new batch size: on an H200 a new size's first calls took 1.1-2.1 s, later ones 6-10 ms.
WARMUP_CALLS = 2
MIN_CALLS = 3  # a p50 of fewer calls is one outlier on a shared machine
PAST_PEAK = 0.8  # a batch size this far below the best so far ends the sweep: larger ones only cost time


class RawForward(TypedDict):
    """`raw_forward`'s record, as the JSON and RESULTS.md's raw table hold it."""

    best_batch_size: int
    images_per_s: float
    batch1_p50_ms: float
    threads: int
    sweep: list[dict[str, float | int]]  # per batch size: batch_size, calls, images_per_s, p50/p95/p99_ms


def raw_forward(
    family: ScriptedFamily,
    workload: Workload,
    seconds_per_size: float,
    max_seconds: float,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> RawForward:
    """Images/s of the image forward per batch size (from the median call: one late re-optimisation
    would otherwise make a size look slow and end the sweep), and batch-1 latency.

    Sizes grow until past the peak, or until the next size (about twice the last one's call
    time, warm-up included) would overrun `max_seconds`: on a large model, batch 64 on two
    cores alone would take longer than every other measurement of that model.
    """
    pixels = family.pixels(workload.images)
    condition = family.conditions([PHRASINGS[0]])
    sweep: list[dict[str, float | int]] = []
    deadline = time.perf_counter() + max_seconds
    for size in batch_sizes:
        if sweep and time.perf_counter() + _next_size_cost_s(sweep[-1]["p50_ms"] / 1000) > deadline:
            break
        batch = pixels[torch.arange(size) % len(pixels)]
        conditions = condition.expand(size, -1).contiguous()
        times = time_calls(partial(family.embed, batch, conditions), seconds_per_size, WARMUP_CALLS)
        sweep.append({"batch_size": size, "calls": len(times), "images_per_s": size / statistics.median(times),
                      **percentiles_ms(times)})
        if sweep[-1]["images_per_s"] < PAST_PEAK * max(row["images_per_s"] for row in sweep):
            break
    best = max(sweep, key=lambda row: row["images_per_s"])
    return {
        "best_batch_size": int(best["batch_size"]),
        "images_per_s": best["images_per_s"],
        "batch1_p50_ms": sweep[0]["p50_ms"],
        "threads": torch.get_num_threads(),
        "sweep": sweep,
    }


def _next_size_cost_s(last_call_s: float) -> float:
    """The least time a twice as large batch size takes: its warm-up and timed calls."""
    return (WARMUP_CALLS + MIN_CALLS) * 2 * last_call_s


def time_calls(call: Callable[[], object], seconds: float, warmup: int, max_calls: int = 10_000) -> list[float]:
    """Durations of repeated calls after `warmup` calls: at least MIN_CALLS, then until `seconds` have passed."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_CALLS or (time.perf_counter() < deadline and len(times) < max_calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times
