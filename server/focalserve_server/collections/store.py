"""The store: collections, items, image bytes, conditions, vectors and the change log, in SQL.

One implementation of every operation, written once in SQL that SQLite and PostgreSQL both
run; an engine (`sqlite.SQLiteStore`, `postgres.PostgresStore`) supplies connections,
transactions, the schema, where image bytes live and the few expressions that differ.

Every write appends to the change log in its own transaction, and writes are serialised (SQLite
has one writer; PostgreSQL takes one advisory lock per writing transaction), so the log's order
is the order in which writes committed: a replica that has applied up to `seq` has seen every
write acknowledged with a smaller one.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import numpy as np

from focalserve_client.schemas import IndexKind
from focalserve_server.access.records import AccessRecords
from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.model import (
    BlockItem,
    BlockWritten,
    Change,
    ChangeKind,
    Chunk,
    Collection,
    Condition,
    ConditionsChanged,
    Item,
    LogCompacted,
    NewItem,
)
from focalserve_server.errors import FocalServeError, InsufficientStorage

ITEM_COLUMNS = "rowid, id, blob, metadata, source, kept"
AUDITED_IDS = 20  # the first ids of an add the audit trail names (it records the count of all)
CONDITION_COLUMNS = "rowid, collection, instruction, index_kind, status, error, index_options"


class Transaction(Protocol):
    """What a store's SQL runs on: `?` placeholders, DB-API style cursors."""

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]]) -> Any: ...


class Store(AccessRecords, ABC):
    """The source of truth for collections; see the module docstring for its guarantees."""

    NOW: str  # SQL for the database clock in seconds: leases expire by one clock, not by each replica's

    def __init__(self, health: StoreHealth | None = None) -> None:
        self.health = health or StoreHealth()

    # engine hooks ------------------------------------------------------------------------

    @abstractmethod
    def _write_transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction that may append to the change log (serialised with every other such one);
        a failed one leaves nothing behind, image bytes included."""

    @abstractmethod
    def _claim_transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction for leasing build chunks; it never writes the log."""

    @abstractmethod
    def _rows(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement."""

    @abstractmethod
    def _put_blob(self, tx: Transaction, digest: str, data: bytes) -> None:
        """Store image bytes under their digest (once); durable when the transaction commits."""

    def _put_blobs(self, tx: Transaction, blobs: dict[str, bytes]) -> None:
        """Many images' bytes by digest (a bulk write's); one at a time unless the engine knows better."""
        for digest, data in blobs.items():
            self._put_blob(tx, digest, data)

    @abstractmethod
    def _stage(self, tx: Transaction, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Fill a staging table of this transaction with `rows` and nothing else, as fast as the engine
        can (PostgreSQL: binary COPY): `staged_items(id, blob, source, kept, metadata)` or
        `staged_vectors(id, condition, vector)`, temporary tables each engine makes in its dialect."""

    @abstractmethod
    def _blob(self, digest: str) -> bytes: ...

    @abstractmethod
    def _metadata_equals(self) -> str:
        """SQL comparing one metadata key (`?`) with one JSON value (`?`)."""

    @abstractmethod
    def _next_chunk(self) -> str:
        """SQL selecting the rowid of one chunk of condition `?` that owner `?` may claim, locked for
        this transaction."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def collect_garbage(self) -> int:
        """Drop image bytes no item refers to any more (deleted or replaced items, a crash between
        writing a blob and committing its row); returns how many."""

    def _translate(self, error: Exception) -> FocalServeError | None:
        """The client's error for what the disk or the database raised; None for anything else (a bug)."""
        return InsufficientStorage.from_os_error(error) if isinstance(error, OSError) else None

    # every call goes through here: faults beneath become client errors and health -----------

    @contextmanager
    def _guard(self, writes: bool) -> Iterator[None]:
        try:
            yield
        except FocalServeError as error:
            self.health.failed(error)
            raise
        except Exception as error:
            translated = self._translate(error)
            if translated is None:
                raise
            self.health.failed(translated)
            raise translated from error
        self.health.succeeded(writes)

    @contextmanager
    def _write(self) -> Iterator[Transaction]:
        with self._guard(writes=True), self._write_transaction() as tx:
            yield tx

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._guard(writes=False):
            return self._rows(sql, parameters)

    def read_blob(self, digest: str) -> bytes:
        with self._guard(writes=False):
            return self._blob(digest)

    def probe_write(self) -> None:
        """One small real write, to learn whether writes work again (raises as a failed write does)."""
        with self._write() as tx:
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(time.time()),),
            )
            self._probe_disk()

    @abstractmethod
    def _probe_disk(self) -> None:
        """Write whatever else a write needs besides the database's rows (SQLite: a blob file)."""

    # identity and log --------------------------------------------------------------------

    def identity(self) -> str:
        """A random id made when the database was created: a snapshot of another database is not ours."""
        rows = self._query("SELECT value FROM meta WHERE key = 'identity'")
        if rows:
            return str(rows[0][0])
        with self._write() as tx:
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('identity', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,)
            )
        return str(self._query("SELECT value FROM meta WHERE key = 'identity'")[0][0])

    def head(self) -> int:
        """The newest log position (kept when compaction has deleted every row up to it)."""
        return max(int(self._query("SELECT coalesce(max(seq), 0) FROM changes")[0][0]), self.compacted_through())

    def changes(self, after: int, limit: int) -> list[Change]:
        """The log after position `after`; LogCompacted if some of it has been compacted away."""
        rows = self._query(
            "SELECT seq, kind, collection, condition, item, last_item FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        if after < (compacted := self.compacted_through()):
            raise LogCompacted(after, compacted)
        return [Change(int(seq), kind, collection, condition, item, last)
                for seq, kind, collection, condition, item, last in rows]

    def compacted_through(self) -> int:
        """Every change up to this position has been deleted (`compact_log`)."""
        rows = self._query("SELECT value FROM meta WHERE key = 'log_compacted_through'")
        return int(rows[0][0]) if rows else 0

    def heartbeat(self, replica: str, applied: int) -> None:
        """Record how far a replica (a gateway's data dir) has applied the log; compaction keeps what it lacks."""
        with self._write() as tx:
            tx.execute("INSERT INTO replicas(id, applied, seen) VALUES (?, ?, ?) ON CONFLICT (id) "
                       "DO UPDATE SET applied = excluded.applied, seen = excluded.seen",
                       (replica, applied, time.time()))

    def compact_log(self, retention_s: float, batch: int) -> int:
        """Delete the changes that every replica heard from within `retention_s` has applied (a stopped
        gateway's last position holds the log for that long), `batch` to a transaction so that a
        writer never waits behind a long one; returns how many. Replicas silent for longer are
        forgotten: one that comes back rebuilds from the store."""
        deleted = 0
        while (step := self._compact_batch(retention_s, batch)) == batch:
            deleted += step
        return deleted + step

    def _compact_batch(self, retention_s: float, batch: int) -> int:
        with self._write() as tx:
            tx.execute("DELETE FROM replicas WHERE seen < ?", (time.time() - retention_s,))
            (horizon,) = tx.execute("SELECT min(applied) FROM replicas").fetchone()
            if horizon is None:
                return 0
            deleted = int(tx.execute(
                "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE seq <= ? ORDER BY seq LIMIT ?)",
                (int(horizon), batch),
            ).rowcount)
            if deleted:
                (through,) = tx.execute("SELECT coalesce(min(seq) - 1, ?) FROM changes", (int(horizon),)).fetchone()
                tx.execute("INSERT INTO meta(key, value) VALUES ('log_compacted_through', ?) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value", (str(min(int(through), int(horizon))),))
            return deleted

    def _log(
        self, tx: Transaction, kind: ChangeKind, collection: str, rows: Sequence[tuple[int | None, int | None]]
    ) -> int:
        """Append (condition, item) changes of one kind; returns the last position written."""
        tx.executemany(
            "INSERT INTO changes(kind, collection, condition, item) VALUES (?, ?, ?, ?)",
            [(kind, collection, condition, item) for condition, item in rows],
        )
        return int(tx.execute("SELECT max(seq) FROM changes").fetchone()[0])

    # collections -------------------------------------------------------------------------

    def create_collection(self, name: str, model: str, actor: str | None = None) -> int | None:
        """The log position of the creation, or None if the collection exists. `actor`, where given, is
        the key the audit trail names, recorded in the same transaction (as for every write below)."""
        with self._write() as tx:
            created = tx.execute(
                "INSERT INTO collections(name, model) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, model)
            ).rowcount
            if created != 1:
                return None
            self._audited(tx, actor, "collection.create", name, model=model)
            return self._log(tx, "collection_created", name, [(None, None)])

    def collection(self, name: str) -> Collection | None:
        rows = self._query("SELECT name, model FROM collections WHERE name = ?", (name,))
        return Collection(*rows[0]) if rows else None

    def collections(self) -> list[Collection]:
        return [Collection(*row) for row in self._query("SELECT name, model FROM collections ORDER BY name")]

    def delete_collection(self, name: str, actor: str | None = None) -> int | None:
        with self._write() as tx:
            deleted = tx.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount
            seq = None
            if deleted == 1:
                self._audited(tx, actor, "collection.delete", name)
                seq = self._log(tx, "collection_deleted", name, [(None, None)])
        self.collect_garbage()
        return seq

    def item_count(self, collection: str) -> int:
        return int(self._query("SELECT count(*) FROM items WHERE collection = ?", (collection,))[0][0])

    # items -------------------------------------------------------------------------------

    def put_items(
        self, collection: str, items: Sequence[NewItem], embedded_under: set[int], actor: str | None = None
    ) -> tuple[list[int], int]:
        """Insert or replace items with their vectors; returns (rowids, log position).

        Raises ConditionsChanged when the collection's conditions are no longer `embedded_under`
        (one was registered meanwhile): nothing is written, and the caller embeds under it too.
        """
        with self._write() as tx:
            conditions = self._conditions(tx, collection)
            if {c.rowid for c in conditions if c.status != "failed"} != embedded_under:
                raise ConditionsChanged(conditions)
            rowids: list[int] = []
            logged: list[tuple[int | None, int | None]] = []
            for item in items:
                digest = _digest(item.image)
                self._put_blob(tx, digest, item.image)
                rowid = int(
                    tx.execute(
                        "INSERT INTO items(collection, id, blob, metadata, source) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (collection, id) DO UPDATE SET blob = excluded.blob, "
                        "metadata = excluded.metadata, source = excluded.source, kept = 1 RETURNING rowid",
                        (collection, item.id, digest, json.dumps(item.metadata, sort_keys=True), item.source),
                    ).fetchone()[0]
                )
                tx.execute("DELETE FROM vectors WHERE item = ?", (rowid,))
                tx.executemany(
                    "INSERT INTO vectors(condition, item, vector) VALUES (?, ?, ?)",
                    [(condition, rowid, _vector_bytes(vector)) for condition, vector in item.vectors.items()],
                )
                rowids.append(rowid)
                logged += [(condition, rowid) for condition in item.vectors]
            self._audited(tx, actor, "items.add", collection, items=len(items),
                          ids=[item.id for item in items[:AUDITED_IDS]])
            return rowids, self._log(tx, "vector", collection, logged or [(None, None)])

    def complete_ids(self, collection: str, ids: Sequence[str], conditions: Sequence[int]) -> set[str]:
        """Which of `ids` are stored with a vector under every one of `conditions`: what a rerun of a
        bulk ingest skips without embedding it again."""
        found: set[str] = set()
        condition_marks = ",".join("?" * len(conditions))
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            rows = self._query(
                f"SELECT i.id FROM items i WHERE i.collection = ? AND i.id IN ({','.join('?' * len(part))}) AND "
                f"(SELECT count(*) FROM vectors v WHERE v.item = i.rowid AND v.condition IN ({condition_marks})) = ?",
                (collection, *part, *conditions, len(conditions)),
            )
            found.update(str(row[0]) for row in rows)
        return found

    def put_block(
        self, collection: str, items: Sequence[BlockItem], embedded_under: set[int], actor: str | None = None
    ) -> BlockWritten:
        """A bulk write in one transaction: the items not stored yet, with their vectors, and the vectors
        stored items lack; an item already stored keeps its image and metadata, so a retried or rerun
        block changes nothing. The new items' rowids form one range, logged as one `block` change
        (writers are serialised, so no other item takes a rowid inside it); vectors added to items
        stored before are logged one by one. Raises ConditionsChanged as `put_items` does."""
        with self._write() as tx:
            conditions = self._conditions(tx, collection)
            if {c.rowid for c in conditions if c.status != "failed"} != embedded_under:
                raise ConditionsChanged(conditions)
            self._put_blobs(tx, {item.digest: item.image for item in items if item.image is not None})
            self._stage(tx, "staged_items", [
                (item.id, item.digest, item.source, int(item.image is not None),
                 json.dumps(item.metadata, sort_keys=True)) for item in items
            ])
            self._stage(tx, "staged_vectors", [(item.id, condition, _vector_bytes(vector))
                                               for item in items for condition, vector in item.vectors.items()])
            new = [int(row[0]) for row in tx.execute(
                "INSERT INTO items(collection, id, blob, source, kept, metadata) "
                "SELECT ?, id, blob, source, kept, metadata FROM staged_items WHERE true ORDER BY id "
                "ON CONFLICT (collection, id) DO NOTHING RETURNING rowid", (collection,)
            ).fetchall()]
            written = [(int(condition), int(item)) for condition, item in tx.execute(
                "INSERT INTO vectors(condition, item, vector) SELECT s.condition, i.rowid, s.vector "
                "FROM staged_vectors s JOIN items i ON i.collection = ? AND i.id = s.id WHERE true "
                "ON CONFLICT (condition, item) DO NOTHING RETURNING condition, item", (collection,)
            ).fetchall()]
            fresh = set(new)
            added_to_stored: list[tuple[int | None, int | None]] = [
                (condition, item) for condition, item in written if item not in fresh]
            seq = self._log(tx, "vector", collection, added_to_stored) if added_to_stored else None
            if new:
                tx.execute("INSERT INTO changes(kind, collection, item, last_item) VALUES ('block', ?, ?, ?)",
                           (collection, min(new), max(new)))
                seq = int(tx.execute("SELECT max(seq) FROM changes").fetchone()[0])
            if written:
                self._audited(tx, actor, "items.ingest", collection, items=len(new), vectors=len(written))
            return BlockWritten(len(new), len(written), seq)

    def block_vectors(self, first: int, last: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The current vectors of items `first`..`last` (a `block` change), by condition: (rowids, vectors)."""
        rows = self._query(
            "SELECT condition, item, vector FROM vectors WHERE item BETWEEN ? AND ? ORDER BY condition, item",
            (first, last),
        )
        by_condition: dict[int, list[tuple[int, np.ndarray]]] = {}
        for condition, item, vector in rows:
            by_condition.setdefault(int(condition), []).append((int(item), _vector(vector)))
        return {condition: (np.array([item for item, _ in pairs], np.int64), np.stack([v for _, v in pairs]))
                for condition, pairs in by_condition.items()}

    def item(self, collection: str, item_id: str) -> Item | None:
        rows = self._query(f"SELECT {ITEM_COLUMNS} FROM items WHERE collection = ? AND id = ?", (collection, item_id))
        return _item(rows[0]) if rows else None

    def items_by_rowid(self, rowids: Sequence[int]) -> dict[int, Item]:
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        rows = self._query(f"SELECT {ITEM_COLUMNS} FROM items WHERE rowid IN ({marks})", tuple(rowids))
        return {int(row[0]): _item(row) for row in rows}

    def items(self, collection: str, after_rowid: int = 0, limit: int = 256) -> list[Item]:
        """Items in rowid order, a page at a time."""
        rows = self._query(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE collection = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (collection, after_rowid, limit),
        )
        return [_item(row) for row in rows]

    def delete_item(self, collection: str, item_id: str, actor: str | None = None) -> int | None:
        """The log position of the deletion, or None if there was no such item."""
        with self._write() as tx:
            row = tx.execute(
                "DELETE FROM items WHERE collection = ? AND id = ? RETURNING rowid", (collection, item_id)
            ).fetchone()
            if row is None:
                return None
            self._audited(tx, actor, "item.delete", collection, id=item_id)
            return self._log(tx, "item_deleted", collection, [(None, int(row[0]))])

    def matching_rowids(self, collection: str, equal: dict[str, Any]) -> np.ndarray:
        """Rowids of items whose metadata has every key equal to the given value."""
        clauses = " AND ".join(self._metadata_equals() for _ in equal)
        parameters: list[Any] = [collection]
        for key, value in equal.items():
            parameters += [key, json.dumps(value)]
        rows = self._query(f"SELECT rowid FROM items WHERE collection = ? AND {clauses}", tuple(parameters))
        return np.array([row[0] for row in rows], dtype=np.int64)

    # conditions --------------------------------------------------------------------------

    def add_condition(
        self, collection: str, instruction: str | None, index_kind: IndexKind, chunk_size: int,
        index_options: dict[str, Any] | None = None,
    ) -> tuple[Condition, bool, int | None]:
        """(condition, created now, log position); see `add_conditions`."""
        [(condition, created)], seq = self.add_conditions(collection, [instruction], index_kind, chunk_size,
                                                          index_options)
        return condition, created, seq

    def add_conditions(
        self, collection: str, instructions: Sequence[str | None], index_kind: IndexKind, chunk_size: int,
        index_options: dict[str, Any] | None = None, actor: str | None = None,
    ) -> tuple[list[tuple[Condition, bool]], int | None]:
        """((condition, created now) per instruction, log position), in one transaction. A new
        condition's backfill is cut into chunks of `chunk_size` stored items, which any replica may
        claim; conditions registered together get the same chunks, so builders take them together."""
        with self._write() as tx:
            items = [int(row[0]) for row in tx.execute(
                "SELECT rowid FROM items WHERE collection = ? ORDER BY rowid", (collection,)
            ).fetchall()]
            added: list[int] = []
            for instruction in dict.fromkeys(instructions):
                if any(c.instruction == instruction for c in self._conditions(tx, collection)):
                    continue
                rowid = int(
                    tx.execute(
                        "INSERT INTO conditions(collection, instruction, index_kind, status, index_options) "
                        "VALUES (?, ?, ?, 'building', ?) RETURNING rowid",
                        (collection, instruction, index_kind, json.dumps(index_options or {}, sort_keys=True)),
                    ).fetchone()[0]
                )
                tx.executemany(
                    "INSERT INTO chunks(condition, collection, first, last) VALUES (?, ?, ?, ?)",
                    [(rowid, collection, part[0], part[-1]) for part in _parts(items, chunk_size)],
                )
                added.append(rowid)
            seq = None
            if added:
                self._audited(tx, actor, "conditions.add", collection, instructions=list(instructions),
                              index=index_kind)
                seq = self._log(tx, "condition_added", collection, [(rowid, None) for rowid in added])
            by_instruction = {c.instruction: c for c in self._conditions(tx, collection)}
        return [(by_instruction[text], by_instruction[text].rowid in added) for text in instructions], seq

    def conditions(self, collection: str) -> list[Condition]:
        return [_condition(row) for row in self._query(
            f"SELECT {CONDITION_COLUMNS} FROM conditions WHERE collection = ? ORDER BY rowid", (collection,)
        )]

    def _conditions(self, tx: Transaction, collection: str) -> list[Condition]:
        rows = tx.execute(
            f"SELECT {CONDITION_COLUMNS} FROM conditions WHERE collection = ? ORDER BY rowid", (collection,)
        ).fetchall()
        return [_condition(row) for row in rows]

    def condition(self, rowid: int) -> Condition | None:
        rows = self._query(f"SELECT {CONDITION_COLUMNS} FROM conditions WHERE rowid = ?", (rowid,))
        return _condition(rows[0]) if rows else None

    def building_conditions(self) -> list[Condition]:
        rows = self._query(f"SELECT {CONDITION_COLUMNS} FROM conditions WHERE status = 'building' ORDER BY rowid")
        return [_condition(row) for row in rows]

    def vector_count(self, condition: int) -> int:
        return int(self._query("SELECT count(*) FROM vectors WHERE condition = ?", (condition,))[0][0])

    def vector(self, condition: int, item: int) -> np.ndarray | None:
        rows = self._query("SELECT vector FROM vectors WHERE condition = ? AND item = ?", (condition, item))
        return _vector(rows[0][0]) if rows else None

    def vectors_of(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """The current vectors of (condition, item) pairs; pairs deleted since are absent."""
        found: dict[tuple[int, int], np.ndarray] = {}
        for start in range(0, len(pairs), 400):
            part = pairs[start : start + 400]
            where = " OR ".join("(condition = ? AND item = ?)" for _ in part)
            flat = [value for pair in part for value in pair]
            rows = self._query(f"SELECT condition, item, vector FROM vectors WHERE {where}", flat)
            for condition, item, vector in rows:
                found[(int(condition), int(item))] = _vector(vector)
        return found

    def all_vectors(self, condition: int) -> tuple[np.ndarray, np.ndarray]:
        """(item rowids int64 (n,), vectors float32 (n, dim)) under a condition."""
        rows = self._query("SELECT item, vector FROM vectors WHERE condition = ? ORDER BY item", (condition,))
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        return np.array([row[0] for row in rows], np.int64), np.stack([_vector(row[1]) for row in rows])

    # shared condition builds -------------------------------------------------------------

    def claim_chunk(self, condition: int, owner: str, lease_s: float) -> Chunk | None:
        """Lease one unfinished chunk whose lease is free, expired (a dead replica's chunk comes back) or
        already `owner`'s (a chunk this replica abandoned when the database went away, taken up again at once)."""
        with self._guard(writes=True), self._claim_transaction() as tx:
            row = tx.execute(self._next_chunk(), (condition, owner)).fetchone()
            if row is None:
                return None
            claimed = tx.execute(
                f"UPDATE chunks SET owner = ?, lease_until = {self.NOW} + ? WHERE rowid = ? "
                "RETURNING rowid, condition, collection, first, last",
                (owner, lease_s, row[0]),
            ).fetchone()
        return Chunk(*(claimed[0], claimed[1], claimed[2], claimed[3], claimed[4]))

    def missing_in_chunk(self, chunk: Chunk) -> list[Item]:
        """The chunk's items that have no vector under its condition yet."""
        rows = self._query(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE collection = ? AND rowid BETWEEN ? AND ? AND rowid NOT IN "
            "(SELECT item FROM vectors WHERE condition = ?) ORDER BY rowid",
            (chunk.collection, chunk.first, chunk.last, chunk.condition),
        )
        return [_item(row) for row in rows]

    def finish_chunk(self, chunk: Chunk, owner: str, vectors: dict[int, np.ndarray]) -> int | None:
        """Write the chunk's vectors and mark it done, if `owner` still holds its lease; returns the
        log position, or None when the lease was lost (another replica redoes the chunk)."""
        with self._write() as tx:
            held = tx.execute(
                f"UPDATE chunks SET done = 1 WHERE rowid = ? AND owner = ? AND done = 0 AND lease_until > {self.NOW} "
                "RETURNING rowid",
                (chunk.rowid, owner),
            ).fetchone()
            if held is None:
                return None
            written = []
            for item, vector in vectors.items():  # an item deleted meanwhile, or re-embedded by an add, is skipped
                row = tx.execute(
                    "INSERT INTO vectors(condition, item, vector) SELECT ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM items WHERE rowid = ?) ON CONFLICT (condition, item) DO NOTHING "
                    "RETURNING item",
                    (chunk.condition, item, _vector_bytes(vector), item),
                ).fetchone()
                if row is not None:
                    written.append((chunk.condition, int(row[0])))
            return self._log(tx, "vector", chunk.collection, written or [(chunk.condition, None)])

    def complete_build(self, condition: int) -> bool:
        """Mark the condition ready once every chunk is done; False while some are not."""
        with self._write() as tx:
            if tx.execute("SELECT 1 FROM chunks WHERE condition = ? AND done = 0", (condition,)).fetchone():
                return False
            tx.execute("UPDATE conditions SET status = 'ready' WHERE rowid = ? AND status = 'building'", (condition,))
            tx.execute("DELETE FROM chunks WHERE condition = ?", (condition,))
        return True

    def fail_build(self, condition: int, error: str) -> None:
        with self._write() as tx:
            tx.execute("UPDATE conditions SET status = 'failed', error = ? WHERE rowid = ?", (error, condition))
            tx.execute("DELETE FROM chunks WHERE condition = ?", (condition,))


def _parts(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _vector(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float32).copy()


def _item(row: Sequence[Any]) -> Item:
    metadata = row[3] if isinstance(row[3], dict) else json.loads(row[3])
    return Item(rowid=int(row[0]), id=row[1], blob=row[2], metadata=metadata, source=row[4], kept=bool(row[5]))


def _condition(row: Sequence[Any]) -> Condition:
    return Condition(int(row[0]), row[1], row[2], row[3], row[4], row[5], json.loads(row[6] or "{}"))
