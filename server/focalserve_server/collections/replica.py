"""This process's FAISS indexes, kept current by applying the store's change log.

Every index change — this replica's own writes and every other replica's — arrives through the
log, in order: a writer commits, then waits until its replica has applied the write's position
before it acknowledges (read-your-writes on the replica that took the write); the others poll the
log. Applying is idempotent (a `vector` change reads the vector as it is now; adding an id that is
present replaces it; removing an absent id does nothing), so a snapshot taken at position `p` can be
loaded and the log replayed from any position up to `p`.

Snapshots live in the data dir as `indexes/<condition>.index`, each recording the database it
belongs to and the position it includes; a restart loads them and replays only the tail.

The log stays bounded: every `heartbeat_s` each replica records its position in the store
(`replicas`, under the data dir's id) and deletes what every replica heard from within
`retention_s` has applied, in batches until none is left, in a task of its own so that applying
never waits for a compaction. A replica whose position fell below that (stopped for longer, or its
snapshots older) rebuilds its indexes from the store instead of replaying, and says so.

An index that should be replaced (`VectorIndex.rebuild_reason`: tombstones piled up, an IVF-PQ
outgrown or able to train, `auto` moving on from exact) is rebuilt in the background from the
store's vectors, brought up to date from the log, and swapped in on the event loop between two
searches: searches never wait for a build and never see a half-built index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focalserve_server.collections.index_kinds import IndexConfig, IndexPolicy, choose
from focalserve_server.collections.indexes import VectorIndex
from focalserve_server.collections.model import Change, Condition, LogCompacted
from focalserve_server.collections.store import Store
from focalserve_server.collections.tuning import tune
from focalserve_server.engine import Engine
from focalserve_server.errors import FocalServeError, InsufficientStorage

logger = logging.getLogger(__name__)

LOG_PAGE = 2000


@dataclass(frozen=True)
class LogRetention:
    """How the change log is kept bounded: every `heartbeat_s` a replica records its position and
    deletes the changes that every replica heard from within `retention_s` has applied, `batch` to
    a transaction (short ones: a writer waits behind each)."""

    retention_s: float
    heartbeat_s: float
    batch: int = 10_000

    @classmethod
    def of(cls, retention_s: float) -> LogRetention:
        """Heartbeats every 5 s, and at least four times per retention (a short one, in tests)."""
        return cls(retention_s, min(5.0, retention_s / 4))


@dataclass
class _Entry:
    condition: Condition
    dim: int
    index: VectorIndex
    rebuilding: bool = False

    @property
    def collection(self) -> str:
        return self.condition.collection


@dataclass(frozen=True)
class _Page:
    """Changes read from the store, with what applying them needs, read in the same worker call."""

    changes: list[Change]
    conditions: dict[int, tuple[Condition, int] | None]  # new conditions and their index dimension
    vectors: dict[tuple[int, int], np.ndarray]  # current vectors of the page's (condition, item) changes
    blocks: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]]  # by seq: a block's (rowids, vectors) by condition


class Replica:
    def __init__(
        self, store: Store, engine: Engine, snapshot_dir: Path, poll_interval_s: float, policy: IndexPolicy,
        retention: LogRetention,
    ) -> None:
        self._store = store
        self._retention = retention
        self.rebuilt_from_store: str | None = None  # why, when the log had been compacted past this replica
        self._engine = engine
        self._policy = policy
        self._rebuilds: set[asyncio.Task[None]] = set()
        self._snapshot_dir = snapshot_dir
        self._poll_interval_s = poll_interval_s
        self._entries: dict[int, _Entry] = {}  # by condition rowid
        self._skipped: set[int] = set()  # conditions of families this gateway does not load
        self._rebuilding_from: dict[int, int] = {}  # by condition: the position a background rebuild replays from
        self.applied = 0
        self.caught_up = False  # set once the log head seen at start-up has been applied
        self._advanced = asyncio.Condition()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []  # following the log, keeping it bounded
        self._database = ""

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._database = await asyncio.to_thread(self._store.identity)
        self._id = await asyncio.to_thread(self._replica_id)
        self._entries, self.applied, stale = await asyncio.to_thread(self._load, True)
        if stale:
            self._note_rebuilt(f"{stale} index snapshots were below the compacted change log")
        await asyncio.to_thread(self._store.heartbeat, self._id, self.applied)
        # nothing to replay (a fresh data dir, snapshots at the head): ready now, not after the follower's first poll
        self.caught_up = self.applied >= await asyncio.to_thread(self._store.head)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self._keep_log())]
        self._start_rebuilds()  # a snapshot may hold another kind than its condition now wants

    async def stop(self) -> None:
        for task in [*self._tasks, *self._rebuilds]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._rebuilds, return_exceptions=True)
        self.save_snapshots()
        with contextlib.suppress(FocalServeError):  # the snapshots' position holds the log for `retention_s`
            await asyncio.to_thread(self._store.heartbeat, self._id, self.applied)

    # reading -----------------------------------------------------------------------------

    def index(self, condition: int) -> VectorIndex | None:
        entry = self._entries.get(condition)
        return entry.index if entry is not None else None

    def size(self, condition: int) -> int:
        index = self.index(condition)
        return len(index) if index is not None else 0

    def describe(self, condition: int) -> dict[str, Any] | None:
        """The index this replica holds for a condition, as `GET .../conditions` shows it."""
        entry = self._entries.get(condition)
        if entry is None:
            return None
        return {**entry.index.describe(), "rebuilding": entry.rebuilding}

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
        while True:
            try:
                page = await asyncio.to_thread(self._fetch, self.applied)
            except LogCompacted as compacted:
                await self._rebuild_all(compacted)
                continue
            if page is None:
                return
            self._apply(page, self._entries, follow=True)
            async with self._advanced:
                self.applied = page.changes[-1].seq
                self._advanced.notify_all()
            self._start_rebuilds()

    async def _keep_log(self) -> None:
        """Every `heartbeat_s`: say how far this replica needs the log kept (what it has applied, or
        less while a background rebuild replays from further back), then delete what every replica
        has applied."""
        failing = False
        while True:
            await asyncio.sleep(self._retention.heartbeat_s)
            held = min([self.applied, *self._rebuilding_from.values()])  # read here, on the loop
            try:
                await asyncio.to_thread(self._store.heartbeat, self._id, held)
                await asyncio.to_thread(self._store.compact_log, self._retention.retention_s, self._retention.batch)
                failing = False
            except Exception:  # the database may be away for a while: the next heartbeat tries again
                if not failing:  # once per outage
                    logger.exception("keeping the change log bounded failed; retrying every %.0f s",
                                     self._retention.heartbeat_s)
                failing = True

    async def _rebuild_all(self, compacted: LogCompacted) -> None:
        """The log this replica still needed is gone (it was silent past `retention_s`): every index
        anew from the store, as a fresh gateway builds them."""
        logger.warning("%s: rebuilding every index from the store", compacted)
        entries, start, _ = await asyncio.to_thread(self._load, False)
        self._entries = entries
        async with self._advanced:
            self.applied = start
            self._advanced.notify_all()
        self._note_rebuilt(str(compacted))

    def _note_rebuilt(self, why: str) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.rebuilt_from_store = f"indexes rebuilt from the store at {when}: {why}"

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
        blocks = {c.seq: self._store.block_vectors(c.item, c.last_item)
                  for c in changes if c.kind == "block" and c.item is not None and c.last_item is not None}
        return _Page(changes, conditions, self._store.vectors_of(pairs), blocks)

    def _describe(self, rowid: int) -> tuple[Condition, int] | None:
        """A new condition and its index dimension; None if gone or of a family this gateway does not load."""
        condition = self._store.condition(rowid)
        if condition is None:  # deleted since; its collection_deleted change follows
            return None
        collection = self._store.collection(condition.collection)
        if collection is None or collection.model not in self._engine.families:
            return None
        return condition, self._engine.families[collection.model].spec.embedding_dim

    def _apply(self, page: _Page, entries: dict[int, _Entry], follow: bool) -> None:
        """Apply a page to `entries`: all of this replica's (`follow`), or one index being rebuilt,
        which only takes its vectors and deletions (a collection deleted meanwhile drops the rebuild)."""
        pending: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # vectors by condition, added together
        for change in page.changes:
            if change.kind == "vector":
                if change.condition is not None and change.item is not None:
                    vector = page.vectors.get((change.condition, change.item))
                    if vector is not None and change.condition in entries:
                        pending[change.condition][change.item] = vector
                continue
            self._add(pending, entries)
            pending = defaultdict(dict)
            if change.kind == "block":
                for condition, (ids, vectors) in page.blocks.get(change.seq, {}).items():
                    if condition in entries:
                        entries[condition].index.add(ids, vectors)
            elif change.kind == "item_deleted" and change.item is not None:
                removed = np.array([change.item], np.int64)
                for entry in entries.values():
                    if entry.collection == change.collection:
                        entry.index.remove(removed)
            elif not follow:
                continue
            elif change.kind == "condition_added" and change.condition is not None:
                self._open(change.condition, page.conditions.get(change.condition))
            elif change.kind == "collection_deleted":
                self._forget(change.collection)
        self._add(pending, entries)

    def _add(self, vectors: dict[int, dict[int, np.ndarray]], entries: dict[int, _Entry]) -> None:
        for condition, by_item in vectors.items():
            ids = np.fromiter(by_item, np.int64, len(by_item))
            entries[condition].index.add(ids, np.stack(list(by_item.values())))

    def _open(self, rowid: int, described: tuple[Condition, int] | None) -> None:
        """A condition the log announces: an empty index (its vectors follow in later changes)."""
        if rowid in self._entries:
            return
        if described is None:
            self._skipped.add(rowid)
            return
        condition, dim = described
        self._entries[rowid] = _Entry(condition, dim, VectorIndex(dim, self._wanted(condition, dim, 0)))

    def _forget(self, collection: str) -> None:
        for rowid in [r for r, entry in self._entries.items() if entry.collection == collection]:
            del self._entries[rowid]
            self._snapshot_path(rowid).unlink(missing_ok=True)

    # snapshots ---------------------------------------------------------------------------

    def _snapshot_path(self, condition: int) -> Path:
        return self._snapshot_dir / f"{condition}.index"

    def _replica_id(self) -> str:
        """This data dir's name in the store's `replicas`: a restarted gateway takes up its own row."""
        path = self._snapshot_dir / "replica-id"
        if not path.exists():
            self._snapshot_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(uuid.uuid4().hex)
        return path.read_text().strip()

    def _load(self, snapshots: bool) -> tuple[dict[int, _Entry], int, int]:
        """Every condition's index: its snapshot of this database (when `snapshots` and the log since it
        is still there), else rebuilt from the store's vectors; the position from which the log must
        be replayed; how many snapshots were too old for the compacted log."""
        head = self._store.head()
        compacted = self._store.compacted_through()
        start, stale = head, 0
        entries: dict[int, _Entry] = {}
        for collection in self._store.collections():
            for condition in self._store.conditions(collection.name):
                loaded = self._load_snapshot(condition) if snapshots else None
                if loaded is not None and loaded[1] < compacted:
                    logger.warning("the snapshot of %s / %r is at %d, below the compacted log (%d): rebuilding it "
                                   "from the store", condition.collection, condition.instruction, loaded[1], compacted)
                    loaded, stale = None, stale + 1
                if loaded is not None:
                    entries[condition.rowid], seq = loaded
                    start = min(start, seq)
                elif (rebuilt := self._rebuild(condition)) is not None:  # vectors as of at least `head`
                    entries[condition.rowid] = rebuilt
        return entries, start, stale

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
        return _Entry(condition, index.dim, index), int(meta["seq"])

    def _rebuild(self, condition: Condition) -> _Entry | None:
        described = self._describe(condition.rowid)
        if described is None:
            self._skipped.add(condition.rowid)
            return None
        logger.info("rebuilding the index of %s / %r from the store", condition.collection, condition.instruction)
        return _Entry(condition, described[1], self._build_from_store(condition, described[1]))

    def _build_from_store(self, condition: Condition, dim: int) -> VectorIndex:
        """The index the condition wants for the vectors the store holds now (in a worker thread)."""
        ids, vectors = self._store.all_vectors(condition.rowid)
        config = self._wanted(condition, dim, len(ids))
        index = VectorIndex.build(dim, config, ids, vectors if len(ids) else np.empty((0, dim), np.float32))
        tune(index, ids, vectors, self._policy.recall, self._policy.fixed_options(condition.index_options))
        return index

    def _wanted(self, condition: Condition, dim: int, n: int) -> IndexConfig:
        options = self._policy.options_for(condition.index_options)
        return choose(condition.index_kind, n, dim, options, self._policy.auto)

    # background rebuilds -----------------------------------------------------------------

    def _start_rebuilds(self) -> None:
        for rowid, entry in self._entries.items():
            if entry.rebuilding:
                continue
            wanted = self._wanted(entry.condition, entry.dim, entry.index.ntotal)
            reason = entry.index.rebuild_reason(wanted, self._policy.tombstone_ratio, self._policy.growth_factor)
            if reason is not None:
                entry.rebuilding = True
                task = asyncio.get_running_loop().create_task(self._replace(rowid, entry, reason))
                self._rebuilds.add(task)
                task.add_done_callback(self._rebuilds.discard)

    async def _replace(self, rowid: int, entry: _Entry, reason: str) -> None:
        """Build a replacement from the store, catch it up with the log, swap it in."""
        started = time.monotonic()
        logger.info("rebuilding the index of %s / %r in the background: %s", entry.collection,
                    entry.condition.instruction, reason)
        try:
            position = self._rebuilding_from[rowid] = self.applied  # the store's vectors are at least this recent
            fresh = _Entry(entry.condition, entry.dim, await asyncio.to_thread(
                self._build_from_store, entry.condition, entry.dim))
            while True:
                page = await asyncio.to_thread(self._fetch, position)
                if page is not None:
                    self._apply(page, {rowid: fresh}, follow=False)
                    position = self._rebuilding_from[rowid] = page.changes[-1].seq
                elif self.applied <= position:  # nothing reached the old index that the new one lacks
                    break
            if self._entries.get(rowid) is entry:  # not deleted meanwhile
                entry.index = fresh.index
                logger.info("swapped in %s for %s / %r after %.1f s", fresh.index.config.factory(),
                            entry.collection, entry.condition.instruction, time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database away, say: the old index keeps serving; retried on a later change
            logger.exception("rebuilding the index of %s / %r failed", entry.collection, entry.condition.instruction)
        finally:
            entry.rebuilding = False
            self._rebuilding_from.pop(rowid, None)

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
