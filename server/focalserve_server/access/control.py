"""What each gateway process holds for access control: the keys it knows, the shared limiter, and
the audit trail, kept fresh by one background task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from focalserve_server.access.limits import SharedLimiter
from focalserve_server.access.records import AccessRecords
from focalserve_server.access.registry import KeyRegistry
from focalserve_server.errors import FocalServeError
from focalserve_server.metrics import Metrics

logger = logging.getLogger(__name__)

MAINTAIN_S = 1.0  # how often slots are renewed or given back
RECORD_USE_S = 60.0  # how often keys' last use is written (the list shows it to within this)


class AccessControl:
    def __init__(self, store: AccessRecords, admin_key: str, poll_s: float, metrics: Metrics) -> None:
        self.store = store
        self.registry = KeyRegistry(store, admin_key)
        self.limiter = SharedLimiter(store, metrics)
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.registry.refresh()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(FocalServeError):
            await asyncio.to_thread(self.store.record_use, self.registry.take_use())

    async def _follow(self) -> None:
        maintained = recorded = time.monotonic()
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.registry.refresh()
                now = time.monotonic()
                if now - maintained >= MAINTAIN_S:
                    maintained = now
                    await self.limiter.maintain()
                if now - recorded >= RECORD_USE_S:
                    recorded = now
                    await asyncio.to_thread(self.store.record_use, self.registry.take_use())
            except FocalServeError as error:  # the store away: keep the keys last read, try again
                logger.warning("access control could not reach the store: %s", error.message)
