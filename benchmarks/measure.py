"""One measurement: a system under closed-loop load at one concurrency, and what the gateway did meanwhile."""

from __future__ import annotations

import os
from dataclasses import dataclass

from benchmarks.gateway_metrics import GatewayCounters, read_counters
from benchmarks.loadgen import LoadResult, Send, run_load
from benchmarks.targets import Target

MIN_WARMUP_REQUESTS = 4  # TorchScript optimises on its second run; a few sequential requests cover it at concurrency 1
MIN_ROUNDS = 3  # requests per worker at least: one round at concurrency 64 on ViT-B-32 gives no percentiles
MAX_WARMUP_REQUESTS = 16  # one round at concurrency 64 would cost a slow system more than the measurement itself


@dataclass(frozen=True)
class Measurement:
    model: str
    system: str
    variant: str | None  # None: the system's default request
    warmup_requests: int
    load_average: float  # the machine's 1-minute load average as the run began: other work skews the numbers
    result: LoadResult
    counters: GatewayCounters | None  # the gateway's share of its /metrics during the run, warm-up included

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "model": self.model, "system": self.system, "variant": self.variant,
            "warmup_requests": self.warmup_requests, "load_average_1m": self.load_average, **self.result.summary(),
        }
        if self.counters is not None:
            row["gateway"] = self.counters.summary()
        return row


async def measure(
    target: Target, model: str, send: Send, concurrency: int, seconds: float, max_requests: int,
    variant: str | None = None,
) -> Measurement:
    """Warm up, then run `concurrency` closed-loop workers for at most `seconds` and `max_requests`."""
    warmup = min(max(concurrency, MIN_WARMUP_REQUESTS), MAX_WARMUP_REQUESTS)
    load_average = os.getloadavg()[0]
    before = await _counters(target, model)
    result = await run_load(send, concurrency, max_requests=max_requests, max_seconds=seconds, warmup_requests=warmup,
                            min_requests=MIN_ROUNDS * concurrency)
    after = await _counters(target, model)
    counters = after - before if after is not None and before is not None else None
    return Measurement(model, target.system, variant, warmup, load_average, result, counters)


async def _counters(target: Target, model: str) -> GatewayCounters | None:
    if target.gateway is None:
        return None
    return await read_counters(target.gateway.session, target.gateway.url, model)
