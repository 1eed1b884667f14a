"""The SQLite engine: one host, the embedded default. WAL mode, `synchronous=FULL`, image bytes as
content-addressed files; several processes on one data dir stay consistent through the change log
(SQLite serialises their writes, each follows the log)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.migrations import (
    SCHEMA_VERSION,
    TABLES_OF_4,
    statements,
    steps_from,
    unversioned,
)
from focalserve_server.collections.store import Store, Transaction
from focalserve_server.errors import DatabaseUnavailable, FocalServeError, InsufficientStorage

# SQLite's primary result codes for a disk that refuses writes: full, read-only, failing I/O
STORAGE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR})
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
BLOB_GRACE_S = 3600.0  # far longer than any add takes between writing its blobs and committing
PROBE_BYTES = 1 << 20  # what a probe writes to the blob dir: room for an image, not just for a row

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
-- AUTOINCREMENT: a deleted item's rowid is never reused, so a log entry names one item forever.
CREATE TABLE IF NOT EXISTS items (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    blob TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source TEXT,
    kept INTEGER NOT NULL DEFAULT 1,
    UNIQUE (collection, id)
);
CREATE TABLE IF NOT EXISTS conditions (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    instruction TEXT,
    index_kind TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    index_options TEXT NOT NULL DEFAULT '{}',
    UNIQUE (collection, instruction)
);
CREATE TABLE IF NOT EXISTS vectors (
    condition INTEGER NOT NULL REFERENCES conditions(rowid) ON DELETE CASCADE,
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    PRIMARY KEY (condition, item)
);
CREATE INDEX IF NOT EXISTS vectors_by_item ON vectors(item);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    collection TEXT NOT NULL,
    condition INTEGER,
    item INTEGER,
    last_item INTEGER
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    condition INTEGER NOT NULL REFERENCES conditions(rowid) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS chunks_open ON chunks(condition, done);
""" + TABLES_OF_4["sqlite"]  # SCHEMA_VERSION of migrations.py
# A bulk write's staging tables: this connection's own, made each time it opens.
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged_items (id TEXT, blob TEXT, source TEXT, kept INTEGER, metadata TEXT);
CREATE TEMP TABLE IF NOT EXISTS staged_vectors (id TEXT, condition INTEGER, vector BLOB);
"""


class SQLiteStore(Store):
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, data_dir: Path, health: StoreHealth | None = None, busy_timeout_s: float = 15.0) -> None:
        """`busy_timeout_s`: how long a write waits for another process's to finish before failing."""
        super().__init__(health)
        self.blob_dir = data_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "focalserve.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        self._new_blobs: list[Path] = []  # blob files the open write transaction created
        self.blob_grace_s = BLOB_GRACE_S
        busy_ms = max(1, round(1000 * busy_timeout_s))
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", f"busy_timeout={busy_ms}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._migrate()
        self._db.executescript(STAGING)

    def _migrate(self) -> None:
        """Make the schema, or bring it to this code's version (migrations.py), under SQLite's write lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "collections" not in tables:
                script, version = SCHEMA, SCHEMA_VERSION
            else:
                found = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                steps = steps_from(int(found[0]) if found else unversioned(
                    {table: {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                     for table in ("items", "conditions")}))
                script = "".join(step.sql["sqlite"] for step in steps)
                version = steps[-1].version if steps else SCHEMA_VERSION
            for statement in statements(script):
                self._db.execute(statement)
            self._db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value", (str(version),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write_transaction(self) -> Iterator[Transaction]:
        with self._lock:
            self._new_blobs = []
            self._db.execute("BEGIN IMMEDIATE")  # SQLite's one writer, across processes too
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise

    _claim_transaction = _write_transaction

    def _roll_back(self) -> None:
        """Undo a failed transaction, the blob files it wrote too: a failed write leaves nothing behind.

        A COMMIT refused for a full disk may already have rolled back; ROLLBACK then fails harmlessly.
        """
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        for path in self._new_blobs:  # no other writer can point at them: writers are serialised
            path.unlink(missing_ok=True)
        self._new_blobs = []

    def _rows(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(parameters)).fetchall()

    def _translate(self, error: Exception) -> FocalServeError | None:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF if isinstance(error, sqlite3.Error) else 0
        if code in STORAGE_CODES:
            name = getattr(error, "sqlite_errorname", "SQLITE_FULL")
            return InsufficientStorage(f"the server cannot write to its disk ({name}); nothing was stored")
        if code in BUSY_CODES:  # another process held the database past the busy timeout
            return DatabaseUnavailable("the collection database stayed busy past its timeout; retry shortly")
        return super()._translate(error)

    def _stage(self, tx: Transaction, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        tx.execute(f"DELETE FROM {table}")
        if rows:
            tx.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)

    def _metadata_equals(self) -> str:
        return "json_extract(metadata, '$.\"' || ? || '\"') IS json_extract(?, '$')"

    def _next_chunk(self) -> str:
        return (
            "SELECT rowid FROM chunks WHERE condition = ? AND done = 0 "
            f"AND (lease_until IS NULL OR lease_until < {self.NOW} OR owner = ?) ORDER BY rowid LIMIT 1"
        )

    # image bytes: files named by their digest --------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / digest

    def _put_blob(self, tx: Transaction, digest: str, data: bytes) -> None:
        """Written and fsynced before the rows that point at it commit: no row points at nothing;
        removed again if the transaction fails (`_roll_back`)."""
        path = self._blob_path(digest)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        self._write_file(path, data)
        self._new_blobs.append(path)

    def _write_file(self, path: Path, data: bytes) -> None:
        """Whole or not at all: a temporary file, fsynced, renamed into place; removed if any step fails."""
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _blob(self, digest: str) -> bytes:
        return self._blob_path(digest).read_bytes()

    def _probe_disk(self) -> None:
        probe = self.blob_dir / "probe"
        self._write_file(probe, bytes(PROBE_BYTES))
        probe.unlink()

    def collect_garbage(self) -> int:
        """Blob files younger than `blob_grace_s` stay: an add (of any process) writes its blobs
        before it commits the rows that refer to them, and this runs without the write lock."""
        referenced = {row[0] for row in self._query("SELECT DISTINCT blob FROM items")}
        cutoff = time.time() - self.blob_grace_s
        removed = 0
        for path in self.blob_dir.glob("*/*"):
            if path.name not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
