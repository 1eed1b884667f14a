"""What the collection routes call: collections, items, conditions and conditional search.

Writes embed first (through the same batchers as /embed), commit to the store with their change
log entry, then wait until this replica has applied that entry: an acknowledged write is durable,
searchable here at once, and on every other replica as soon as it has followed the log. Each
write answers its log position, and a search given `min_seq` waits (bounded) until this replica
has applied it: read-your-writes across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from focalserve_client.schemas import IndexKind, IndexOptions
from focalserve_server.collections.builder import ConditionBuilder
from focalserve_server.collections.health import Failure, Part
from focalserve_server.collections.index_kinds import check_options
from focalserve_server.collections.model import Collection, Condition, ConditionsChanged, Item, NewItem
from focalserve_server.collections.replica import Replica
from focalserve_server.collections.store import Store
from focalserve_server.engine import Engine, FamilyEngine
from focalserve_server.errors import (
    Conflict,
    FocalServeError,
    ImageNotKept,
    InvalidInstruction,
    InvalidRequest,
    NotFound,
    ReplicaBehind,
    await_at,
    check_at,
    collection_not_found,
)

logger = logging.getLogger(__name__)

GARBAGE_INTERVAL_S = 3600.0  # image bytes of deleted or replaced items are dropped this often (and at start)
ADD_ATTEMPTS = 5  # conditions registered while an add embeds: embed under them too, this many times at most


@dataclass(frozen=True)
class ItemUpload:
    id: str
    image: bytes
    metadata: dict[str, Any]
    source: str | None = None  # the image's URL, when it was sent as one


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]


class CollectionService:
    def __init__(
        self, store: Store, engine: Engine, replica: Replica, builder: ConditionBuilder, chunk_size: int, wait_s: float
    ) -> None:
        self._store = store
        self._engine = engine
        self._replica = replica
        self._builder = builder
        self._chunk_size = chunk_size
        self._wait_s = wait_s  # how long a write waits for its own replica, a search for `min_seq`
        self._garbage: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._replica.start()
        self._builder.start()
        self._garbage = asyncio.get_running_loop().create_task(self._collect_garbage())

    async def stop(self) -> None:
        if self._garbage is not None:
            self._garbage.cancel()
            await asyncio.gather(self._garbage, return_exceptions=True)
        await self._builder.stop()
        await self._replica.stop()

    async def _collect_garbage(self) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self._store.collect_garbage)
                if removed:
                    logger.info("dropped the image bytes of %d deleted or replaced items", removed)
            except FocalServeError as error:  # the disk or the database is away: next time
                logger.warning("collecting unreferenced image bytes failed: %s", error.message)
            await asyncio.sleep(GARBAGE_INTERVAL_S)

    @property
    def caught_up(self) -> bool:
        """Whether this replica has applied the log as it stood at start-up (readiness)."""
        return self._replica.caught_up

    @property
    def applied(self) -> int:
        return self._replica.applied

    @property
    def rebuilt_from_store(self) -> str | None:
        """Why this replica rebuilt its indexes from the store, if the log had been compacted past it."""
        return self._replica.rebuilt_from_store

    async def failing(self, probe: bool) -> dict[Part, Failure]:
        """What fails beneath the store now. With `probe` (readiness, not metrics scrapes), while
        writes fail for lack of space, one small probe write first checks whether space has
        returned, so the report clears without a client write."""
        if probe and "storage" in self._store.health.failing():
            with contextlib.suppress(FocalServeError):
                await asyncio.to_thread(self._store.probe_write)
        return self._store.health.failing()

    async def _applied_here(self, seq: int | None) -> int | None:
        """Wait until this replica has applied a write it committed, so its own reads see it."""
        if seq is not None and not await self._replica.wait_for(seq, self._wait_s):
            logger.warning("write %d is committed but not yet applied here after %.0f s", seq, self._wait_s)
        return seq

    # collections -------------------------------------------------------------------------

    async def create_collection(
        self, name: str, model: str | None, index_kind: IndexKind, index_options: IndexOptions, actor: str
    ) -> tuple[Collection, int]:
        """`actor` (here and in every write below): the key the audit trail names."""
        family = self._engine.family(model)
        self._check_options(index_options, family)
        seq = await asyncio.to_thread(self._store.create_collection, name, family.spec.name, actor)
        if seq is None:
            raise Conflict(f"collection {name!r} already exists", loc=("name",))
        collection = Collection(name, family.spec.name)
        if not family.spec.conditional:  # a plain CLIP collection has one unconditional view
            _, _, seq = await asyncio.to_thread(self._store.add_condition, name, None, index_kind, self._chunk_size,
                                                index_options.model_dump(exclude_none=True))
            self._builder.wake()
        return collection, await self._applied_here(seq) or 0

    async def list_collections(self) -> list[Collection]:
        """Collections whose family is loaded (others wait for a gateway that serves it)."""
        collections = await asyncio.to_thread(self._store.collections)
        return [c for c in collections if c.model in self._engine.families]

    async def item_count(self, name: str) -> int:
        return await asyncio.to_thread(self._store.item_count, name)

    async def collection(self, name: str) -> Collection:
        collection = await asyncio.to_thread(self._store.collection, name)
        if collection is None:
            raise collection_not_found(name)
        return collection

    async def delete_collection(self, name: str, actor: str) -> int:
        await self.collection(name)
        seq = await asyncio.to_thread(self._store.delete_collection, name, actor)
        if seq is None:
            raise collection_not_found(name)
        return await self._applied_here(seq) or 0

    def family_of(self, collection: Collection) -> FamilyEngine:
        return self._engine.family(collection.model)

    # items -------------------------------------------------------------------------------

    async def add_items(self, name: str, uploads: list[ItemUpload], actor: str) -> tuple[int, int]:
        """Embed every item under every condition, commit; returns (how many, log position)."""
        collection = await self.collection(name)
        family = self.family_of(collection)
        pixels = await asyncio.gather(
            *(await_at(("items", i, "image"), family.prepare(u.image)) for i, u in enumerate(uploads))
        )
        conditions = await asyncio.to_thread(self._store.conditions, name)
        vectors: dict[int, list[np.ndarray]] = {}
        for _ in range(ADD_ATTEMPTS):
            live = [c for c in conditions if c.status != "failed"]
            todo = [c for c in live if c.rowid not in vectors]
            embedded = await self._embed_under(family, todo, pixels)
            vectors.update({c.rowid: v for c, v in zip(todo, embedded)})
            vectors = {rowid: v for rowid, v in vectors.items() if rowid in {c.rowid for c in live}}
            items = [
                NewItem(u.id, u.image, u.metadata, {c: v[i] for c, v in vectors.items()}, u.source)
                for i, u in enumerate(uploads)
            ]
            try:
                _, seq = await asyncio.to_thread(self._store.put_items, name, items, set(vectors), actor)
            except ConditionsChanged as changed:
                conditions = changed.conditions
                continue
            return len(items), await self._applied_here(seq) or 0
        raise ReplicaBehind(f"the conditions of {name!r} kept changing while items were added; retry")

    async def _embed_under(
        self, family: FamilyEngine, conditions: list[Condition], pixels: list[np.ndarray]
    ) -> list[list[np.ndarray]]:
        """Every image under every condition, per condition: each image goes to the family once with all
        the conditions (a readout family runs its trunk once per image, however many conditions there are)."""
        if not conditions:
            return []
        instructions = [condition.instruction for condition in conditions]
        per_image = await asyncio.gather(*(family.embed_pixels_under(p, instructions) for p in pixels))
        return [[vectors[j] for vectors in per_image] for j in range(len(conditions))]

    async def list_items(self, name: str, after_rowid: int, limit: int) -> list[Item]:
        """Items in insertion order after `after_rowid`, at most `limit`."""
        await self.collection(name)
        return await asyncio.to_thread(self._store.items, name, after_rowid, limit)

    async def read_image(self, name: str, item_id: str) -> bytes:
        item = await self.item(name, item_id)
        if not item.kept:
            raise ImageNotKept(f"the image of item {item_id!r} was not kept (ingested with --no-keep-images); "
                               f"its source is {item.source}")
        return await asyncio.to_thread(self._store.read_blob, item.blob)

    async def item(self, name: str, item_id: str) -> Item:
        await self.collection(name)
        item = await asyncio.to_thread(self._store.item, name, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} is not in collection {name!r}")
        return item

    async def delete_item(self, name: str, item_id: str, actor: str) -> int:
        await self.collection(name)
        seq = await asyncio.to_thread(self._store.delete_item, name, item_id, actor)
        if seq is None:
            raise NotFound(f"item {item_id!r} is not in collection {name!r}")
        return await self._applied_here(seq) or 0

    # conditions --------------------------------------------------------------------------

    async def add_conditions(
        self, name: str, instructions: Sequence[str], index_kind: IndexKind, index_options: IndexOptions,
        field: tuple[str | int, ...], actor: str,
    ) -> tuple[list[tuple[Condition, bool]], int]:
        """Register instructions in one transaction; their backfills build together (one pass over the
        stored images for all of them). `field` locates the instructions in the request for errors."""
        collection = await self.collection(name)
        family = self.family_of(collection)
        self._check_options(index_options, family)
        if not family.spec.conditional:
            raise InvalidInstruction(
                f"collection {name!r} uses the plain CLIP family {collection.model}: it has one unconditional view",
                loc=field,
            )
        many = len(instructions) > 1 or field != ("instruction",)
        normalised = [check_at((*field, n) if many else field, family.normalise, text)
                      for n, text in enumerate(instructions)]
        options = index_options.model_dump(exclude_none=True)
        registered, seq = await asyncio.to_thread(
            self._store.add_conditions, name, normalised, index_kind, self._chunk_size, options, actor
        )
        for condition, created in registered:
            if not created and (condition.index_kind, condition.index_options) != (index_kind, options):
                raise Conflict(f"condition {condition.instruction!r} is registered with index "
                               f"{condition.index_kind!r} and options {condition.index_options}")
        if any(created for _, created in registered):
            self._builder.wake()
        return registered, await self._applied_here(seq) or self._replica.applied

    async def conditions(self, name: str) -> list[Condition]:
        await self.collection(name)
        return await asyncio.to_thread(self._store.conditions, name)

    @staticmethod
    def _check_options(options: IndexOptions, family: FamilyEngine) -> None:
        try:
            check_options(options, family.spec.embedding_dim)
        except ValueError as error:
            raise InvalidRequest(str(error), loc=("index_options", "pq_m")) from None

    def index_in_use(self, condition: Condition) -> dict[str, Any] | None:
        """The index this gateway holds for the condition: kind, parameters, size, tombstones."""
        return self._replica.describe(condition.rowid)

    async def embedded(self, condition: Condition) -> int:
        """How many items have a vector under the condition: progress of a build, on every replica alike."""
        return await asyncio.to_thread(self._store.vector_count, condition.rowid)

    async def find_condition(self, collection: Collection, instruction: str | None) -> Condition:
        conditions = await asyncio.to_thread(self._store.conditions, collection.name)
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
        self, name: str, instruction: str | None, query: dict[str, Any], k: int, equal: dict[str, Any], min_seq: int
    ) -> tuple[Condition, list[Hit]]:
        if min_seq > self._replica.applied and min_seq > await asyncio.to_thread(self._store.head):
            raise InvalidRequest(f"min_seq {min_seq} is beyond the newest write; send a FocalServe-Seq you were given",
                                 loc=("min_seq",))
        if not await self._replica.wait_for(min_seq, self._wait_s):
            raise ReplicaBehind(
                f"this replica has applied the change log up to {self._replica.applied}, not yet {min_seq}; retry",
                loc=("min_seq",),
            )
        collection = await self.collection(name)
        condition = await self.find_condition(collection, instruction)
        index = self._replica.index(condition.rowid)
        if index is None:  # registered on another replica a moment ago, not yet applied here
            raise ReplicaBehind(f"condition {condition.instruction!r} is not yet loaded on this replica; retry")
        vector, exclude = await self._query_vector(collection, condition, query)
        allowed = await asyncio.to_thread(self._store.matching_rowids, name, equal) if equal else None
        if allowed is not None and exclude is not None:
            allowed = allowed[allowed != exclude]
        extra = 1 if exclude is not None and allowed is None else 0
        found = [(rowid, score) for rowid, score in index.search(vector, k + extra, allowed)[0] if rowid != exclude][:k]
        items = await asyncio.to_thread(self._store.items_by_rowid, [rowid for rowid, _ in found])
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
        vector = await asyncio.to_thread(self._store.vector, condition.rowid, item.rowid)
        if vector is None:
            raise InvalidRequest(
                f"item {item.id!r} is not embedded under this condition yet; retry when it is ready",
                loc=("query", "item_id"),
            )
        return vector, item.rowid
