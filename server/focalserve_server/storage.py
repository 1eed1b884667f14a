"""Durable state of collections: SQLite in WAL mode (the source of truth) and image blobs.

SQLite holds collections, items, conditions and every vector; FAISS indexes are derived from
it and can always be rebuilt. Image bytes are stored once per content hash, so a new
condition (or a new model version) can re-embed every item. A write returns only after its
transaction is committed with `synchronous=FULL`: what the API acknowledges survives a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focalserve_client.schemas import IndexKind

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS items (
    rowid INTEGER PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    blob TEXT NOT NULL,
    metadata TEXT NOT NULL,
    UNIQUE (collection, id)
);
CREATE TABLE IF NOT EXISTS conditions (
    rowid INTEGER PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    instruction TEXT,
    index_kind TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    UNIQUE (collection, instruction)
);
-- AUTOINCREMENT: a rewritten vector always gets a larger rowid, so (count, max rowid) per
-- condition changes with every write and tells whether a FAISS snapshot is current.
CREATE TABLE IF NOT EXISTS vectors (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    condition INTEGER NOT NULL REFERENCES conditions(rowid) ON DELETE CASCADE,
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    UNIQUE (condition, item)
);
CREATE INDEX IF NOT EXISTS vectors_by_item ON vectors(item);
"""


@dataclass(frozen=True)
class Collection:
    name: str
    model: str


@dataclass(frozen=True)
class Item:
    rowid: int
    id: str
    blob: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Condition:
    rowid: int
    collection: str
    instruction: str | None  # None: the unconditional view of a plain CLIP collection
    index_kind: IndexKind
    status: str
    error: str | None


@dataclass(frozen=True)
class NewItem:
    """An item to store, with its vector under each condition (by condition rowid)."""

    id: str
    image: bytes
    metadata: dict[str, Any]
    vectors: dict[int, np.ndarray]


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "focalserve.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    # collections -------------------------------------------------------------------------

    def create_collection(self, name: str, model: str) -> bool:
        """False if it already exists."""
        with self._transaction() as db:
            return (
                db.execute("INSERT OR IGNORE INTO collections(name, model) VALUES (?, ?)", (name, model)).rowcount == 1
            )

    def collection(self, name: str) -> Collection | None:
        rows = self._query("SELECT name, model FROM collections WHERE name = ?", (name,))
        return Collection(*rows[0]) if rows else None

    def collections(self) -> list[Collection]:
        return [Collection(*row) for row in self._query("SELECT name, model FROM collections ORDER BY name")]

    def delete_collection(self, name: str) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount == 1
        self.collect_garbage()
        return deleted

    def item_count(self, collection: str) -> int:
        return self._query("SELECT count(*) FROM items WHERE collection = ?", (collection,))[0][0]

    # items -------------------------------------------------------------------------------

    def put_items(self, collection: str, items: list[NewItem]) -> list[int]:
        """Insert or replace items and their vectors in one transaction; returns their rowids."""
        blobs = [self.write_blob(item.image) for item in items]  # blobs first: rows never point at nothing
        rowids = []
        with self._transaction() as db:
            for item, blob in zip(items, blobs):
                metadata = json.dumps(item.metadata, sort_keys=True)
                rowid = db.execute(
                    "INSERT INTO items(collection, id, blob, metadata) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (collection, id) DO UPDATE SET blob = excluded.blob, metadata = excluded.metadata "
                    "RETURNING rowid",
                    (collection, item.id, blob, metadata),
                ).fetchone()[0]
                db.execute("DELETE FROM vectors WHERE item = ?", (rowid,))
                db.executemany(
                    "INSERT INTO vectors(condition, item, vector) VALUES (?, ?, ?)",
                    [(condition, rowid, _vector_bytes(vector)) for condition, vector in item.vectors.items()],
                )
                rowids.append(rowid)
        return rowids

    def item(self, collection: str, item_id: str) -> Item | None:
        rows = self._query(
            "SELECT rowid, id, blob, metadata FROM items WHERE collection = ? AND id = ?", (collection, item_id)
        )
        return _item(rows[0]) if rows else None

    def items_by_rowid(self, rowids: list[int]) -> dict[int, Item]:
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        rows = self._query(f"SELECT rowid, id, blob, metadata FROM items WHERE rowid IN ({marks})", tuple(rowids))
        return {row[0]: _item(row) for row in rows}

    def items(self, collection: str, after_rowid: int = 0, limit: int = 256) -> list[Item]:
        """Items in rowid order, a page at a time (for condition builds and listings)."""
        rows = self._query(
            "SELECT rowid, id, blob, metadata FROM items WHERE collection = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (collection, after_rowid, limit),
        )
        return [_item(row) for row in rows]

    def existing_ids(self, collection: str, ids: list[str]) -> set[str]:
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT id FROM items WHERE collection = ? AND id IN ({marks})", (collection, *ids))
        return {row[0] for row in rows}

    def delete_item(self, collection: str, item_id: str) -> int | None:
        """The deleted item's rowid, or None if there was no such item."""
        with self._transaction() as db:
            row = db.execute(
                "DELETE FROM items WHERE collection = ? AND id = ? RETURNING rowid", (collection, item_id)
            ).fetchone()
        return row[0] if row else None

    def matching_rowids(self, collection: str, equal: dict[str, Any]) -> np.ndarray:
        """Rowids of items whose metadata has every key equal to the given value."""
        clauses = " AND ".join("json_extract(metadata, ?) IS ?" for _ in equal)
        parameters: list[Any] = [collection]
        for key, value in equal.items():
            parameters += [f'$."{key}"', value]
        rows = self._query(f"SELECT rowid FROM items WHERE collection = ? AND {clauses}", tuple(parameters))
        return np.array([row[0] for row in rows], dtype=np.int64)

    # conditions and vectors --------------------------------------------------------------

    def add_condition(
        self, collection: str, instruction: str | None, index_kind: IndexKind
    ) -> tuple[Condition, bool]:
        """The condition and whether it was created now (False: it was registered before)."""
        with self._transaction() as db:
            created = (
                db.execute(
                    "INSERT OR IGNORE INTO conditions(collection, instruction, index_kind, status) "
                    "VALUES (?, ?, ?, 'building')",
                    (collection, instruction, index_kind),
                ).rowcount
                == 1
            )
        return next(c for c in self.conditions(collection) if c.instruction == instruction), created

    def conditions(self, collection: str) -> list[Condition]:
        rows = self._query(
            "SELECT rowid, collection, instruction, index_kind, status, error FROM conditions "
            "WHERE collection = ? ORDER BY rowid",
            (collection,),
        )
        return [Condition(*row) for row in rows]

    def set_condition_status(self, rowid: int, status: str, error: str | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE conditions SET status = ?, error = ? WHERE rowid = ?", (status, error, rowid))

    def put_vectors(self, condition: int, vectors: dict[int, np.ndarray]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors(condition, item, vector) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM items WHERE rowid = ?)",  # the item may be gone
                [(condition, item, _vector_bytes(vector), item) for item, vector in vectors.items()],
            )

    def vector_count(self, condition: int) -> int:
        return self._query("SELECT count(*) FROM vectors WHERE condition = ?", (condition,))[0][0]

    def vector_stamp(self, condition: int) -> tuple[int, int]:
        """(count, newest vector rowid): equal stamps mean identical vectors under the condition."""
        count, newest = self._query(
            "SELECT count(*), coalesce(max(rowid), 0) FROM vectors WHERE condition = ?", (condition,)
        )[0]
        return int(count), int(newest)

    def vectors(self, condition: int) -> tuple[np.ndarray, np.ndarray]:
        """(rowids int64 (n,), vectors float32 (n, dim)) of a condition."""
        rows = self._query("SELECT item, vector FROM vectors WHERE condition = ? ORDER BY item", (condition,))
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        return ids, np.stack([np.frombuffer(row[1], dtype=np.float32) for row in rows])

    def vector(self, condition: int, item: int) -> np.ndarray | None:
        rows = self._query("SELECT vector FROM vectors WHERE condition = ? AND item = ?", (condition, item))
        return np.frombuffer(rows[0][0], dtype=np.float32).copy() if rows else None

    def missing_items(self, condition: int, collection: str, limit: int) -> list[Item]:
        """Items with no vector under `condition` yet (what a build or catch-up must embed)."""
        rows = self._query(
            "SELECT rowid, id, blob, metadata FROM items WHERE collection = ? AND rowid NOT IN "
            "(SELECT item FROM vectors WHERE condition = ?) ORDER BY rowid LIMIT ?",
            (collection, condition, limit),
        )
        return [_item(row) for row in rows]

    # blobs -------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / digest

    def write_blob(self, data: bytes) -> str:
        """Store bytes under their SHA-256 (once), durably; returns the digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._blob_path(digest)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            temporary = path.with_name(f"{digest}.{threading.get_ident()}.tmp")
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        return digest

    def read_blob(self, digest: str) -> bytes:
        return self._blob_path(digest).read_bytes()

    def collect_garbage(self, min_age_s: float = 3600) -> int:
        """Remove blobs no item refers to; returns how many.

        Blobs younger than `min_age_s` stay: an add writes its blobs before committing its rows.
        """
        referenced = {row[0] for row in self._query("SELECT DISTINCT blob FROM items")}
        cutoff = time.time() - min_age_s
        removed = 0
        for path in self.blob_dir.glob("*/*"):
            if path.name not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _item(row: tuple) -> Item:
    return Item(rowid=row[0], id=row[1], blob=row[2], metadata=json.loads(row[3]))
