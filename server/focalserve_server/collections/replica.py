"""This process's FAISS indexes, kept current by applying the store's change log.

Every index change — this replica's own writes and every other replica's — arrives through the
log, in order: a writer commits, then waits until its replica has applied the write's position
before it acknowledges (read-your-writes on the replica that took the write); the others poll the
log. Applying is idempotent (a `vector` change reads the vector as it is now; adding an id that is
present replaces it; removing an absent id does nothing), so a snapshot taken at position `p` can be
loaded and the log replayed from any position up to `p`.

Snapshots live in the data dir as `indexes/<condition>.index`, each recording the database it
belongs to and the position it includes; a restart loads them and replays only the tail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focalserve_server.collections.indexes import VectorIndex
from focalserve_server.collections.model import Change, Condition
from focalserve_server.collections.store import Store
from focalserve_server.engine import Engine
from focalserve_server.errors import InsufficientStorage

logger = logging.getLogger(__name__)

LOG_PAGE = 2000


@dataclass
class _Entry:
    collection: str
    index: VectorIndex


@dataclass(frozen=True)
class _Page:
    """Changes read from the store, with what applying them needs, read in the same worker call."""

    changes: list[Change]
    conditions: dict[int, tuple[Condition, int] | None]  # new conditions and their index dimension
    vectors: dict[tuple[int, int], np.ndarray]  # current vectors of the page's (condition, item) changes


class Replica:
    def __init__(self, store: Store, engine: Engine, snapshot_dir: Path, poll_interval_s: float) -> None:
        self._store = store
        self._engine = engine
        self._snapshot_dir = snapshot_dir
        self._poll_interval_s = poll_interval_s
        self._entries: dict[int, _Entry] = {}  # by condition rowid
        self._skipped: set[int] = set()  # conditions of families this gateway does not load
        self.applied = 0
        self.caught_up = False  # set once the log head seen at start-up has been applied
        self._advanced = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._database = ""

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._database = await asyncio.to_thread(self._store.identity)
        self.applied = await asyncio.to_thread(self._load_snapshots)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.save_snapshots()

    # reading -----------------------------------------------------------------------------

    def index(self, condition: int) -> VectorIndex | None:
        entry = self._entries.get(condition)
        return entry.index if entry is not None else None

    def size(self, condition: int) -> int:
        index = self.index(condition)
        return len(index) if index is not None else 0

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        """True once this replica has applied position `seq`; False if `timeout_s` passed first."""
        if self.applied >= seq:
            return True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s), self._advanced:
                await self._advanced.wait_for(lambda: self.applied >= seq)
        except TimeoutError:
            return False
        return True

    # following the log -------------------------------------------------------------------

    async def _follow(self) -> None:
        head = await asyncio.to_thread(self._store.head)
        failing = False
        while True:
            self._wake.clear()  # before reading: a wake-up that arrives while applying is not lost
            try:
                await self._apply_pending()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a while: keep the last good state, retry
                if not failing:  # once per outage, not once per poll
                    logger.exception("applying the change log failed; retrying every %.2f s", self._poll_interval_s)
                failing = True
            if not self.caught_up and self.applied >= head:
                self.caught_up = True
            try:
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _apply_pending(self) -> None:
        """Apply every change after `applied`, a page at a time.

        The store is read in a worker thread; the page is applied on the event loop, where
        searches run, so an index never changes under a search.
        """
        while (page := await asyncio.to_thread(self._fetch, self.applied)) is not None:
            self._apply(page)
            async with self._advanced:
                self.applied = page.changes[-1].seq
                self._advanced.notify_all()

    def _fetch(self, after: int) -> _Page | None:
        changes = self._store.changes(after, LOG_PAGE)
        if not changes:
            return None
        added = [c.condition for c in changes if c.kind == "condition_added" and c.condition is not None]
        conditions = {rowid: self._describe(rowid) for rowid in added if rowid not in self._entries}
        pairs = [
            (c.condition, c.item)
            for c in changes
            if c.kind == "vector" and c.item is not None and c.condition is not None
            and c.condition not in self._skipped
        ]
        return _Page(changes, conditions, self._store.vectors_of(pairs))

    def _describe(self, rowid: int) -> tuple[Condition, int] | None:
        """A new condition and its index dimension; None if gone or of a family this gateway does not load."""
        condition = self._store.condition(rowid)
        if condition is None:  # deleted since; its collection_deleted change follows
            return None
        collection = self._store.collection(condition.collection)
        if collection is None or collection.model not in self._engine.families:
            return None
        return condition, self._engine.families[collection.model].spec.embedding_dim

    def _apply(self, page: _Page) -> None:
        pending: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # vectors by condition, added together
        for change in page.changes:
            if change.kind == "vector":
                if change.condition is not None and change.item is not None:
                    vector = page.vectors.get((change.condition, change.item))
                    if vector is not None and change.condition in self._entries:
                        pending[change.condition][change.item] = vector
                continue
            self._add(pending)
            pending = defaultdict(dict)
            if change.kind == "condition_added" and change.condition is not None:
                self._open(change.condition, page.conditions.get(change.condition))
            elif change.kind == "item_deleted" and change.item is not None:
                removed = np.array([change.item], np.int64)
                for entry in self._entries.values():
                    if entry.collection == change.collection:
                        entry.index.remove(removed)
            elif change.kind == "collection_deleted":
                self._forget(change.collection)
        self._add(pending)

    def _add(self, vectors: dict[int, dict[int, np.ndarray]]) -> None:
        for condition, by_item in vectors.items():
            ids = np.fromiter(by_item, np.int64, len(by_item))
            self._entries[condition].index.add(ids, np.stack(list(by_item.values())))

    def _open(self, rowid: int, described: tuple[Condition, int] | None) -> None:
        """A condition the log announces: an empty index (its vectors follow in later changes)."""
        if rowid in self._entries:
            return
        if described is None:
            self._skipped.add(rowid)
            return
        condition, dim = described
        self._entries[rowid] = _Entry(condition.collection, VectorIndex(dim, condition.index_kind))

    def _forget(self, collection: str) -> None:
        for rowid in [r for r, entry in self._entries.items() if entry.collection == collection]:
            del self._entries[rowid]
            self._snapshot_path(rowid).unlink(missing_ok=True)

    # snapshots ---------------------------------------------------------------------------

    def _snapshot_path(self, condition: int) -> Path:
        return self._snapshot_dir / f"{condition}.index"

    def _load_snapshots(self) -> int:
        """Load every condition's snapshot of this database, or rebuild it from the store's vectors;
        returns the position from which the log must be replayed."""
        head = self._store.head()
        start = head
        for collection in self._store.collections():
            for condition in self._store.conditions(collection.name):
                loaded = self._load_snapshot(condition)
                if loaded is not None:
                    self._entries[condition.rowid], seq = loaded
                    start = min(start, seq)
                elif (rebuilt := self._rebuild(condition)) is not None:  # vectors as of at least `head`
                    self._entries[condition.rowid] = rebuilt
        return start

    def _load_snapshot(self, condition: Condition) -> tuple[_Entry, int] | None:
        path = self._snapshot_path(condition.rowid)
        if not path.exists():
            return None
        try:
            index = VectorIndex.load(path)
        except (OSError, ValueError) as error:
            logger.warning("ignoring snapshot %s: %s", path, error)
            return None
        meta = index.snapshot_meta
        if meta.get("database") != self._database or not isinstance(meta.get("seq"), int):
            return None
        return _Entry(condition.collection, index), int(meta["seq"])

    def _rebuild(self, condition: Condition) -> _Entry | None:
        described = self._describe(condition.rowid)
        if described is None:
            self._skipped.add(condition.rowid)
            return None
        entry = _Entry(condition.collection, VectorIndex(described[1], condition.index_kind))
        logger.info("rebuilding the index of %s / %r from the store", condition.collection, condition.instruction)
        ids, vectors = self._store.all_vectors(condition.rowid)
        if len(ids):
            entry.index.add(ids, vectors)
        return entry

    def save_snapshots(self) -> None:
        """Write every index with the position it includes (at shutdown, and when a build completes).

        On the event loop, like every change to the indexes: nothing moves while they are written.
        A snapshot the disk refuses is skipped (the previous one, if any, stays whole).
        """
        started = time.monotonic()
        saved = 0
        for rowid, entry in list(self._entries.items()):
            try:
                self._snapshot_dir.mkdir(parents=True, exist_ok=True)
                entry.index.save(self._snapshot_path(rowid), {"database": self._database, "seq": self.applied})
                saved += 1
            except OSError as error:  # a snapshot is a cache: without it, a restart replays more of the log
                logger.warning("could not write the index snapshot of condition %d: %s", rowid, error)
                if (full := InsufficientStorage.from_os_error(error)) is not None:
                    self._store.health.failed(full)
        logger.info("saved %d of %d index snapshots in %.2f s", saved, len(self._entries), time.monotonic() - started)
