"""Collections searched under a condition: SQLite is the truth, FAISS indexes follow it.

Adds embed first (through the same batchers as /embed), then commit items and vectors in one
transaction, then update the in-memory indexes: an acknowledged add is durable, and an index
can always be rebuilt from SQLite. A condition is built in the background from the stored
image blobs; on start, snapshots whose stamp matches SQLite are loaded, others are rebuilt,
and unfinished builds resume.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focalserve_client.schemas import IndexKind
from focalserve_server.engine import Engine, FamilyEngine
from focalserve_server.errors import Conflict, InvalidInstruction, InvalidRequest, NotFound, await_at, check_at
from focalserve_server.search.indexes import VectorIndex
from focalserve_server.storage import Collection, Condition, Item, NewItem, Store

logger = logging.getLogger(__name__)

BUILD_CHUNK = 64


@dataclass(frozen=True)
class ItemUpload:
    id: str
    image: bytes
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]


class CollectionService:
    def __init__(self, store: Store, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self._indexes: dict[int, VectorIndex] = {}  # by condition rowid
        self._builds: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def _index_dir(self) -> Path:
        return self.store.data_dir / "indexes"

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load or rebuild every index, then resume unfinished condition builds."""
        for collection in await asyncio.to_thread(self.store.collections):
            if collection.model not in self.engine.families:
                logger.warning("collection %s needs model %s, which is not loaded", collection.name, collection.model)
                continue
            for condition in await asyncio.to_thread(self.store.conditions, collection.name):
                self._indexes[condition.rowid] = await asyncio.to_thread(self._load_index, collection, condition)
                if condition.status == "building":
                    self._start_build(collection, condition)

    async def stop(self) -> None:
        for task in self._builds.values():
            task.cancel()
        await asyncio.gather(*self._builds.values(), return_exceptions=True)
        for condition_id in list(self._indexes):
            await asyncio.to_thread(self._save_index, condition_id)

    def _snapshot_path(self, condition: int) -> Path:
        return self._index_dir / f"{condition}.index"

    def _load_index(self, collection: Collection, condition: Condition) -> VectorIndex:
        path, stamp = self._snapshot_path(condition.rowid), self.store.vector_stamp(condition.rowid)
        stamp_path = path.with_suffix(".stamp")
        if path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == list(stamp):
            return VectorIndex.load(path)
        logger.info("rebuilding index of %s / %r from SQLite", collection.name, condition.instruction)
        index = VectorIndex(self.engine.family(collection.model).spec.embedding_dim, condition.index_kind)
        ids, vectors = self.store.vectors(condition.rowid)
        if len(ids):
            index.add(ids, vectors)
        return index

    def _save_index(self, condition: int) -> None:
        index = self._indexes.get(condition)
        if index is None:
            return
        self._index_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.store.vector_stamp(condition)
        path = self._snapshot_path(condition)
        index.save(path)
        path.with_suffix(".stamp").write_text(json.dumps(list(stamp)))

    # collections -------------------------------------------------------------------------

    async def create_collection(self, name: str, model: str | None, index_kind: IndexKind) -> Collection:
        family = self.engine.family(model)
        if not await asyncio.to_thread(self.store.create_collection, name, family.spec.name):
            raise Conflict(f"collection {name!r} already exists")
        collection = Collection(name, family.spec.name)
        if not family.spec.conditional:  # a plain CLIP collection has one unconditional view
            condition, _ = await asyncio.to_thread(self.store.add_condition, name, None, index_kind)
            await self._activate(collection, condition)
        return collection

    async def list_collections(self) -> list[Collection]:
        """Collections whose family is loaded (others wait for a gateway that serves it)."""
        collections = await asyncio.to_thread(self.store.collections)
        return [c for c in collections if c.model in self.engine.families]

    async def item_count(self, name: str) -> int:
        return await asyncio.to_thread(self.store.item_count, name)

    async def collection(self, name: str) -> Collection:
        collection = await asyncio.to_thread(self.store.collection, name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist")
        return collection

    async def delete_collection(self, name: str) -> None:
        await self.collection(name)
        async with self._lock(name):
            for condition in await asyncio.to_thread(self.store.conditions, name):
                await self._forget_condition(condition.rowid)
            await asyncio.to_thread(self.store.delete_collection, name)

    async def _forget_condition(self, condition: int) -> None:
        task = self._builds.pop(condition, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._indexes.pop(condition, None)
        for path in (self._snapshot_path(condition), self._snapshot_path(condition).with_suffix(".stamp")):
            path.unlink(missing_ok=True)

    def family_of(self, collection: Collection) -> FamilyEngine:
        return self.engine.family(collection.model)

    def index_size(self, condition: int) -> int:
        index = self._indexes.get(condition)
        return len(index) if index is not None else 0

    # items -------------------------------------------------------------------------------

    async def add_items(self, name: str, uploads: list[ItemUpload]) -> int:
        """Embed every item under every ready condition, commit, then index; returns how many."""
        collection = await self.collection(name)
        family = self.family_of(collection)
        pixels = await asyncio.gather(
            *(await_at(("items", i, "image"), family.prepare(u.image)) for i, u in enumerate(uploads))
        )
        vectors = await self._embed_under_ready(family, name, pixels, {})
        async with self._lock(name):
            # a condition may have finished building meanwhile: embed under it too before committing
            vectors = await self._embed_under_ready(family, name, pixels, vectors)
            items = [
                NewItem(upload.id, upload.image, upload.metadata, {c: v[i] for c, v in vectors.items()})
                for i, upload in enumerate(uploads)
            ]
            rowids = np.array(await asyncio.to_thread(self.store.put_items, name, items), np.int64)
            for condition, per_item in vectors.items():
                self._indexes[condition].add(rowids, np.stack(per_item))
        return len(items)

    async def _embed_under_ready(
        self, family: FamilyEngine, name: str, pixels: list[np.ndarray], done: dict[int, list[np.ndarray]]
    ) -> dict[int, list[np.ndarray]]:
        """`done` plus vectors under every ready condition not in it, by condition rowid."""
        conditions = await asyncio.to_thread(self.store.conditions, name)
        todo = [c for c in conditions if c.status == "ready" and c.rowid not in done and c.rowid in self._indexes]
        embedded = await asyncio.gather(*(self._embed_all(family, condition, pixels) for condition in todo))
        return {**done, **{condition.rowid: vectors for condition, vectors in zip(todo, embedded)}}

    async def _embed_all(
        self, family: FamilyEngine, condition: Condition, pixels: list[np.ndarray]
    ) -> list[np.ndarray]:
        return list(await asyncio.gather(*(family.embed_pixels(p, condition.instruction) for p in pixels)))

    async def list_items(self, name: str, after_rowid: int, limit: int) -> list[Item]:
        """Items in insertion order after `after_rowid`, at most `limit`."""
        await self.collection(name)
        return await asyncio.to_thread(self.store.items, name, after_rowid, limit)

    async def read_image(self, name: str, item_id: str) -> bytes:
        item = await self.item(name, item_id)
        return await asyncio.to_thread(self.store.read_blob, item.blob)

    async def item(self, name: str, item_id: str) -> Item:
        await self.collection(name)
        item = await asyncio.to_thread(self.store.item, name, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} is not in collection {name!r}")
        return item

    async def delete_item(self, name: str, item_id: str) -> None:
        await self.collection(name)
        async with self._lock(name):
            rowid = await asyncio.to_thread(self.store.delete_item, name, item_id)
            if rowid is None:
                raise NotFound(f"item {item_id!r} is not in collection {name!r}")
            for condition in await asyncio.to_thread(self.store.conditions, name):
                if condition.rowid in self._indexes:
                    self._indexes[condition.rowid].remove(np.array([rowid], np.int64))

    # conditions --------------------------------------------------------------------------

    async def add_condition(self, name: str, instruction: str, index_kind: IndexKind) -> tuple[Condition, bool]:
        collection = await self.collection(name)
        family = self.family_of(collection)
        if not family.spec.conditional:
            raise InvalidInstruction(
                f"collection {name!r} uses the plain CLIP family {collection.model}: it has one unconditional view",
                loc=("instruction",),
            )
        normalised = check_at(("instruction",), family.normalise, instruction)
        condition, created = await asyncio.to_thread(self.store.add_condition, name, normalised, index_kind)
        if not created and condition.index_kind != index_kind:
            raise Conflict(f"condition {normalised!r} is registered with index {condition.index_kind!r}")
        if created:
            await self._activate(collection, condition)
        return condition, created

    async def _activate(self, collection: Collection, condition: Condition) -> None:
        self._indexes[condition.rowid] = VectorIndex(
            self.family_of(collection).spec.embedding_dim, condition.index_kind
        )
        self._start_build(collection, condition)

    def _start_build(self, collection: Collection, condition: Condition) -> None:
        task = asyncio.get_running_loop().create_task(self._build(collection, condition))
        self._builds[condition.rowid] = task
        task.add_done_callback(lambda _: self._builds.pop(condition.rowid, None))

    async def _build(self, collection: Collection, condition: Condition) -> None:
        """Embed every item that has no vector under the condition yet, a chunk at a time."""
        family = self.family_of(collection)
        try:
            while True:
                items = await asyncio.to_thread(self.store.missing_items, condition.rowid, collection.name, BUILD_CHUNK)
                if not items:
                    async with self._lock(collection.name):  # adds check readiness under the same lock
                        if not await asyncio.to_thread(self.store.missing_items, condition.rowid, collection.name, 1):
                            await asyncio.to_thread(self.store.set_condition_status, condition.rowid, "ready")
                            break
                    continue
                vectors = await asyncio.gather(*(self._embed_stored(family, condition, item) for item in items))
                embedded = {item.rowid: vector for item, vector in zip(items, vectors)}
                async with self._lock(collection.name):
                    await asyncio.to_thread(self.store.put_vectors, condition.rowid, embedded)
                    live = await asyncio.to_thread(self.store.items_by_rowid, list(embedded))
                    kept = [rowid for rowid in embedded if rowid in live]  # deleted meanwhile: skip
                    if kept:
                        self._indexes[condition.rowid].add(
                            np.array(kept, np.int64), np.stack([embedded[r] for r in kept])
                        )
            async with self._lock(collection.name):  # FAISS must not change while it is written
                await asyncio.to_thread(self._save_index, condition.rowid)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception("building condition %r of %s failed", condition.instruction, collection.name)
            await asyncio.to_thread(self.store.set_condition_status, condition.rowid, "failed", str(error))

    async def _embed_stored(self, family: FamilyEngine, condition: Condition, item: Item) -> np.ndarray:
        image = await asyncio.to_thread(self.store.read_blob, item.blob)
        return await family.embed_pixels(await family.prepare(image), condition.instruction)

    async def conditions(self, name: str) -> list[Condition]:
        await self.collection(name)
        return await asyncio.to_thread(self.store.conditions, name)

    async def find_condition(self, collection: Collection, instruction: str | None) -> Condition:
        conditions = await asyncio.to_thread(self.store.conditions, collection.name)
        family = self.family_of(collection)
        if not family.spec.conditional:
            if instruction is not None:
                raise InvalidInstruction(
                    f"collection {collection.name!r} is plain CLIP: search it without a condition", loc=("condition",)
                )
            return conditions[0]
        if instruction is None:
            raise InvalidInstruction(
                f"collection {collection.name!r} is FocalLens: name a registered condition", loc=("condition",)
            )
        normalised = check_at(("condition",), family.normalise, instruction)
        for condition in conditions:
            if condition.instruction == normalised:
                return condition
        registered = ", ".join(repr(c.instruction) for c in conditions) or "none"
        raise NotFound(
            f"condition {normalised!r} is not registered on {collection.name!r}; registered: {registered}",
            loc=("condition",),
        )

    # search ------------------------------------------------------------------------------

    async def search(
        self, name: str, instruction: str | None, query: dict[str, Any], k: int, equal: dict[str, Any]
    ) -> tuple[Condition, list[Hit]]:
        collection = await self.collection(name)
        condition = await self.find_condition(collection, instruction)
        vector, exclude = await self._query_vector(collection, condition, query)
        allowed = await asyncio.to_thread(self.store.matching_rowids, name, equal) if equal else None
        if allowed is not None and exclude is not None:
            allowed = allowed[allowed != exclude]
        index = self._indexes[condition.rowid]
        extra = 1 if exclude is not None and allowed is None else 0
        found = [(rowid, score) for rowid, score in index.search(vector, k + extra, allowed)[0] if rowid != exclude][:k]
        items = await asyncio.to_thread(self.store.items_by_rowid, [rowid for rowid, _ in found])
        return condition, [Hit(items[r].id, float(s), items[r].metadata) for r, s in found if r in items]

    async def _query_vector(
        self, collection: Collection, condition: Condition, query: dict[str, Any]
    ) -> tuple[np.ndarray, int | None]:
        """The query embedding and, for an item query, the item's rowid (left out of its own results)."""
        family = self.family_of(collection)
        if query.get("text") is not None:
            return await await_at(("query", "text"), family.embed_query_text(query["text"])), None
        if query.get("image") is not None:
            pixels = await await_at(("query", "image"), family.prepare(query["image"]))
            return await family.embed_pixels(pixels, condition.instruction), None
        item = await self.item(collection.name, query["item_id"])
        vector = await asyncio.to_thread(self.store.vector, condition.rowid, item.rowid)
        if vector is None:
            raise InvalidRequest(
                f"item {item.id!r} is not embedded under this condition yet; retry when it is ready",
                loc=("query", "item_id"),
            )
        return vector, item.rowid

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
