"""A closed-loop async load generator, bounded in request count and in time.

`concurrency` workers each send one request, wait for its answer, and send the next, until
`max_requests` have been sent or `max_seconds` have passed. A slow system at high concurrency
may be held past `max_seconds` until `min_requests` have been sent (never past four times
`max_seconds`), so that its percentiles come from several rounds, not one. Closed-loop load measures
throughput at a fixed number of outstanding requests, which is how the concurrency levels
in RESULTS.md are defined.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.report import percentiles_ms

HARD_LIMIT_FACTOR = 4  # how far past max_seconds min_requests may hold a run
Send = Callable[[int], Awaitable[int]]  # request number -> images it carried; raises on failure


@dataclass
class LoadResult:
    concurrency: int
    elapsed_s: float = 0.0
    requests: int = 0
    images: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.images * self._rate

    @property
    def _rate(self) -> float:
        return 1.0 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "images_per_s": self.images_per_s,
            "requests_per_s": self.requests * self._rate,
            **percentiles_ms(self.latencies_s),
            "first_error": self.first_error,
        }


async def run_load(
    send: Send, concurrency: int, *, max_requests: int, max_seconds: float, warmup_requests: int = 0,
    min_requests: int = 0,
) -> LoadResult:
    """Drive `send` from `concurrency` workers; warm-up requests are sent first and not counted."""
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency, max_requests and max_seconds must be positive")
    await _warm_up(send, min(warmup_requests, max_requests), concurrency)
    result = LoadResult(concurrency)
    next_request = 0
    start = time.perf_counter()
    deadline, hard_deadline = start + max_seconds, start + HARD_LIMIT_FACTOR * max_seconds

    def more() -> bool:
        now = time.perf_counter()
        if next_request >= max_requests or now >= hard_deadline:
            return False
        return now < deadline or next_request < min_requests

    async def worker() -> None:
        nonlocal next_request
        while more():
            number, next_request = next_request, next_request + 1
            sent = time.perf_counter()
            try:
                images = await send(number)
            except Exception as error:  # a benchmark counts failures instead of stopping at the first
                result.errors += 1
                result.first_error = result.first_error or f"{type(error).__name__}: {error}"[:300]
                continue
            result.latencies_s.append(time.perf_counter() - sent)
            result.requests += 1
            result.images += images

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def _warm_up(send: Send, count: int, concurrency: int) -> None:
    """Fill caches, JIT profiles and connection pools before measuring; failures surface later."""
    for first in range(0, count, concurrency):
        await asyncio.gather(*(send(n) for n in range(first, min(first + concurrency, count))),
                             return_exceptions=True)
