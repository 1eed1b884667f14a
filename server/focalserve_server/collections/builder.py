"""Condition backfills, built by every replica together a chunk at a time.

Registering a condition cuts the collection's stored items into chunks (store.add_condition).
Each replica's builder leases one chunk at a time through the store, embeds the chunk's items that
have no vector yet, and writes their vectors while it still holds the lease; a replica that dies
mid-chunk loses only that chunk, which another replica claims once the lease expires. When no chunk
is left, any replica marks the condition ready. Items added after registration are embedded under
the condition by the add itself (service.add_items), so the chunks cover everything.

Conditions of one collection registered together are built together: with a chunk of one, the
builder claims the next chunk of each other building condition of that collection, and chunks
covering the same items are embedded in one pass (each image decoded once and sent to the
family once with all of their conditions; a readout family runs its trunk once for them).
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
        """Build one chunk of some building condition (with the same chunk of the collection's other
        building conditions), or finish conditions with none left."""
        building = await asyncio.to_thread(self._store.building_conditions)
        for condition in building:
            family = await self._family(condition)
            if family is None:
                continue
            chunk = await asyncio.to_thread(self._store.claim_chunk, condition.rowid, self._owner, self._lease_s)
            if chunk is not None:
                claimed = [(condition, chunk)]
                for sibling in building:
                    if sibling.collection == condition.collection and sibling.rowid != condition.rowid:
                        other = await asyncio.to_thread(self._store.claim_chunk, sibling.rowid, self._owner,
                                                        self._lease_s)
                        if other is not None:
                            claimed.append((sibling, other))
                for span in {(c.first, c.last) for _, c in claimed}:
                    await self._build(family, [(cond, c) for cond, c in claimed if (c.first, c.last) == span])
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

    async def _build(self, family: FamilyEngine, chunks: list[tuple[Condition, Chunk]]) -> None:
        """Chunks of several conditions over the same items: each missing image embedded once under
        every condition it lacks."""
        # an item whose image bytes were not kept (`focalserve ingest --no-keep-images`) has nothing to
        # embed here: an ingest of its source with the condition registered fills it in
        missing = [[item for item in await asyncio.to_thread(self._store.missing_in_chunk, chunk) if item.kept]
                   for _, chunk in chunks]
        items = {item.rowid: item for lacking in missing for item in lacking}
        lacking_rowids = [{item.rowid for item in lacking} for lacking in missing]
        wanted = {rowid: [number for number, rowids in enumerate(lacking_rowids) if rowid in rowids] for rowid in items}
        try:
            embedded = await asyncio.gather(*(
                self._embed(family, [chunks[n][0] for n in wanted[rowid]], item.blob) for rowid, item in items.items()
            ))
        except FocalServeError as error:
            if error.status >= 500:
                raise  # overloaded or backend away: transient, the lease lapses and the chunk comes back
            for condition, _ in chunks:
                await self._fail(condition, str(error))
            return
        except Exception as error:
            for condition, _ in chunks:
                await self._fail(condition, str(error))
            return
        vectors: list[dict[int, np.ndarray]] = [{} for _ in chunks]
        for rowid, per_condition in zip(items, embedded):
            for number, vector in zip(wanted[rowid], per_condition):
                vectors[number][rowid] = vector
        for (condition, chunk), written_vectors in zip(chunks, vectors):
            written = await asyncio.to_thread(self._store.finish_chunk, chunk, self._owner, written_vectors)
            if written is None:
                logger.warning("lost the lease of chunk %d of %r; another replica redoes it", chunk.rowid,
                               condition.instruction)

    async def _embed(self, family: FamilyEngine, conditions: list[Condition], blob: str) -> list[np.ndarray]:
        image = await asyncio.to_thread(self._store.read_blob, blob)
        pixels = await family.prepare(image)
        return await family.embed_pixels_under(pixels, [condition.instruction for condition in conditions])

    async def _fail(self, condition: Condition, error: str) -> None:
        logger.error("building condition %r of %s failed: %s", condition.instruction, condition.collection, error)
        await asyncio.to_thread(self._store.fail_build, condition.rowid, error)
