"""Deterministic waiting inside asyncio tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], steps: int = 10_000) -> None:
    """Yield to the loop until `condition` holds; bounded by steps, never by wall time."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")
