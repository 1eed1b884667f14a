"""Condition backfills, built by every replica together a chunk at a time.

Registering a condition cuts the collection's stored items into chunks (store.add_condition).
Each replica's builder leases one chunk at a time through the store, embeds the chunk's items that
have no vector yet, and writes their vectors while it still holds the lease; a replica that dies
mid-chunk loses only that chunk, which another replica claims once the lease expires. When no chunk
is left, any replica marks the condition ready. Items added after registration are embedded under
the condition by the add itself (service.add_items), so the chunks cover everything.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from focalserve_server.collections.model import Chunk, Condition
from focalserve_server.collections.replica import Replica
from focalserve_server.collections.store import Store
from focalserve_server.engine import Engine, FamilyEngine
from focalserve_server.errors import FocalServeError

logger = logging.getLogger(__name__)


class ConditionBuilder:
    def __init__(
        self, store: Store, engine: Engine, replica: Replica, owner: str, lease_s: float, poll_interval_s: float
    ) -> None:
        self._store = store
        self._engine = engine
        self._replica = replica
        self._owner = owner
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """A condition was registered here: look for work now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            try:
                worked = await self._work_once()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:  # the database or the backend may be away: the lease lapses, we retry
                if not failing:  # once per outage, not once per poll
                    logger.exception("a condition build step failed; retrying")
                failing, worked = True, False
            if worked:
                continue
            try:
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _work_once(self) -> bool:
        """Build one chunk of some building condition, or finish conditions with none left."""
        for condition in await asyncio.to_thread(self._store.building_conditions):
            family = await self._family(condition)
            if family is None:
                continue
            chunk = await asyncio.to_thread(self._store.claim_chunk, condition.rowid, self._owner, self._lease_s)
            if chunk is not None:
                await self._build(condition, family, chunk)
                return True
            if await asyncio.to_thread(self._store.complete_build, condition.rowid):
                await self._replica.wait_for(await asyncio.to_thread(self._store.head), self._lease_s)
                self._replica.save_snapshots()
                return True
        return False

    async def _family(self, condition: Condition) -> FamilyEngine | None:
        collection = await asyncio.to_thread(self._store.collection, condition.collection)
        if collection is None or collection.model not in self._engine.families:
            return None  # another gateway serves that family
        return self._engine.families[collection.model]

    async def _build(self, condition: Condition, family: FamilyEngine, chunk: Chunk) -> None:
        items = await asyncio.to_thread(self._store.missing_in_chunk, chunk)
        try:
            vectors = await asyncio.gather(*(self._embed(family, condition, item.blob) for item in items))
        except FocalServeError as error:
            if error.status >= 500:
                raise  # overloaded or backend away: transient, the lease lapses and the chunk comes back
            await self._fail(condition, str(error))
            return
        except Exception as error:
            await self._fail(condition, str(error))
            return
        written = await asyncio.to_thread(
            self._store.finish_chunk, chunk, self._owner, {item.rowid: v for item, v in zip(items, vectors)}
        )
        if written is None:
            logger.warning("lost the lease of chunk %d of %r; another replica redoes it", chunk.rowid,
                           condition.instruction)

    async def _embed(self, family: FamilyEngine, condition: Condition, blob: str) -> np.ndarray:
        image = await asyncio.to_thread(self._store.read_blob, blob)
        return await family.embed_pixels(await family.prepare(image), condition.instruction)

    async def _fail(self, condition: Condition, error: str) -> None:
        logger.error("building condition %r of %s failed: %s", condition.instruction, condition.collection, error)
        await asyncio.to_thread(self._store.fail_build, condition.rowid, error)
