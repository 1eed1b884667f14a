"""A small Ray actor the pipeline's tasks report to: rows skipped before embedding (they never reach
the sink) and when the first embedding actor was ready (the run's start-up ends there)."""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._ready: float | None = None

    def add(self, key: str, count: int) -> None:
        self._counts[key] = self._counts.get(key, 0) + count

    def ready(self, at: float) -> None:
        self._ready = at if self._ready is None else min(self._ready, at)

    def totals(self) -> tuple[dict[str, int], float | None]:
        return dict(self._counts), self._ready
