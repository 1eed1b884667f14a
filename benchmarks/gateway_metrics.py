"""What the gateway did during a run, read from its own /metrics: backend calls, batch sizes, cache hits.

Throughput alone does not say *why* a configuration is faster; the counters do (how many
instruction-model calls a run cost, how full the image batches were).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class GatewayCounters:
    instruction_calls: float = 0.0
    instruction_items: float = 0.0
    image_calls: float = 0.0
    image_items: float = 0.0
    cache_hits: float = 0.0
    cache_misses: float = 0.0

    def __sub__(self, other: GatewayCounters) -> GatewayCounters:
        return GatewayCounters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def summary(self) -> dict[str, float]:
        mean_batch = self.image_items / self.image_calls if self.image_calls else float("nan")
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "mean_image_batch": mean_batch}


async def read_counters(session: aiohttp.ClientSession, url: str, family: str) -> GatewayCounters:
    """The family's cumulative counters now; subtract two readings for one run's share."""
    async with session.get(f"{url}/metrics", raise_for_status=True) as response:
        text = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    return GatewayCounters(
        instruction_calls=value("focalserve_batch_size_count", model=f"{family}_instruction"),
        instruction_items=value("focalserve_batch_size_sum", model=f"{family}_instruction"),
        image_calls=value("focalserve_batch_size_count", model=f"{family}_image"),
        image_items=value("focalserve_batch_size_sum", model=f"{family}_image"),
        cache_hits=value("focalserve_condition_cache_total", model=family, result="hit"),
        cache_misses=value("focalserve_condition_cache_total", model=family, result="miss"),
    )
