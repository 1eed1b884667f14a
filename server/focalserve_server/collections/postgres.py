"""The PostgreSQL engine: the store that several gateways share (`FOCALSERVE_DATABASE_URL`).

Everything a replica needs lives in the database — collections, items and metadata, image bytes
(content-addressed, in `blobs`), conditions, vectors, the change log and the build chunks — so a
replica's data dir only caches FAISS snapshots. Writing transactions take one advisory lock, which
makes the log's order the commit order (a replica never skips a write that commits late); chunk
claims use `FOR UPDATE SKIP LOCKED` and never wait for each other.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.migrations import SCHEMA_VERSION, TABLES_OF_4, steps_from, unversioned
from focalserve_server.collections.store import Store, Transaction
from focalserve_server.errors import DatabaseUnavailable, FocalServeError, InsufficientStorage, WriteOutcomeUnknown

LOG_LOCK = 0x466F63616C  # the advisory lock every log-writing transaction holds until it commits

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    blob TEXT NOT NULL,  -- a digest in blobs, unless kept = 0 (`focalserve ingest --no-keep-images`)
    metadata TEXT NOT NULL,
    source TEXT,
    kept INTEGER NOT NULL DEFAULT 1,
    UNIQUE (collection, id)
);
CREATE TABLE IF NOT EXISTS conditions (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    instruction TEXT,
    index_kind TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    index_options TEXT NOT NULL DEFAULT '{}',
    UNIQUE (collection, instruction)
);
CREATE TABLE IF NOT EXISTS vectors (
    condition BIGINT NOT NULL REFERENCES conditions(rowid) ON DELETE CASCADE,
    item BIGINT NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    vector BYTEA NOT NULL,
    PRIMARY KEY (condition, item)
);
CREATE INDEX IF NOT EXISTS vectors_by_item ON vectors(item);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    collection TEXT NOT NULL,
    condition BIGINT,
    item BIGINT,
    last_item BIGINT
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    condition BIGINT NOT NULL REFERENCES conditions(rowid) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    first BIGINT NOT NULL,
    last BIGINT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS chunks_open ON chunks(condition, done);
""" + TABLES_OF_4["postgres"]  # SCHEMA_VERSION of migrations.py
# A bulk write's staging tables (store.STAGING_TABLES), made once per connection, each with the COPY
# types of its columns.
STAGING = {
    "staged_items": ("id TEXT, blob TEXT, source TEXT, kept INTEGER, metadata TEXT",
                     ["text", "text", "text", "int4", "text"]),
    "staged_vectors": ("id TEXT, condition BIGINT, vector BYTEA", ["text", "int8", "bytea"]),
    "staged_blobs": ("digest TEXT, data BYTEA", ["text", "bytea"]),
}


@functools.cache
def _postgres(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (the SQL holds no other `?` or `%`)."""
    return sql.replace("?", "%s")


class _Cursor:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._connection.execute(_postgres(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]]) -> None:
        with self._connection.cursor() as cursor:
            cursor.executemany(_postgres(sql), [tuple(row) for row in parameters])

    def copy_into(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows into a staging table through binary COPY (tens of thousands of rows a second on one
        connection, where INSERTs manage a few thousand); the table is made on first use."""
        columns, types = STAGING[table]
        self._connection.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS")
        with self._connection.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


class _Watchdog:
    """Severs a connection whose call outlives `timeout_s`.

    A database that stops answering without closing the connection (a partition; a proxy that holds
    packets) leaves a call blocked until TCP gives up, minutes later; the server's own
    `statement_timeout` cannot help when its answer never arrives. Shutting the socket down from
    here makes the blocked call fail at once, and the pool discards the connection.

    One thread watches every call: a timer thread per call would cost a thread start on each one.
    Every call gets the same timeout, so the deadlines come in the order the calls start, and the
    watcher only ever waits for the oldest.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._calls: OrderedDict[int, tuple[float, psycopg.Connection[Any]]] = OrderedDict()  # by token
        self._tokens = itertools.count()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="focalserve-db-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def watching(self, connection: psycopg.Connection[Any]) -> Iterator[None]:
        token = next(self._tokens)
        with self._changed:
            self._calls[token] = (time.monotonic() + self.timeout_s, connection)
            if len(self._calls) == 1:  # the watcher was idle, waiting for a call
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._calls.pop(token, None)

    def check(self, connection: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out, watched like any call."""
        with self.watching(connection):
            ConnectionPool.check_connection(connection)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if not self._calls:
                    self._changed.wait()
                    continue
                token, (deadline, connection) = next(iter(self._calls.items()))
                if (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)  # woken early only to close: a newer call's deadline is later
                    continue
                del self._calls[token]
                _sever(connection)


def _sever(connection: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(OSError, psycopg.Error):
        fileno = connection.pgconn.socket
        with socket.socket(fileno=os.dup(fileno)) as severed:
            severed.shutdown(socket.SHUT_RDWR)


class PostgresStore(Store):
    NOW = "extract(epoch from clock_timestamp())::double precision"

    def __init__(
        self, url: str, pool_size: int = 8, connect_timeout_s: float = 30.0, wait_s: float = 5.0,
        health: StoreHealth | None = None, statement_timeout_s: float = 15.0,
    ) -> None:
        """`wait_s`: how long a call waits for a connection (all busy, or the database away) before 503;
        `statement_timeout_s`: the most one statement or transaction may take, on the server (which
        cancels it) and here (`_Watchdog`), before 503 `database_unavailable`."""
        super().__init__(health)
        self._watchdog = _Watchdog(statement_timeout_s)
        limit_ms = max(1, round(1000 * statement_timeout_s))
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, name="focalserve", timeout=wait_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(wait_s)),
                    "options": f"-c statement_timeout={limit_ms} -c idle_in_transaction_session_timeout={limit_ms}"},
            check=self._watchdog.check,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
            with self._pool.connection() as connection, connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))  # replicas starting together
                script, version = self._migration(connection)
                connection.execute(script.encode())  # this module's own DDL (bytes: a query psycopg takes as is)
                connection.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s) ON CONFLICT (key) "
                                   "DO UPDATE SET value = excluded.value", (str(version),))
        except BaseException:
            self.close()  # refused (a newer schema) or failed: no pool or watchdog threads left behind
            raise

    @staticmethod
    def _migration(connection: psycopg.Connection[Any]) -> tuple[str, int]:
        """The script that makes the schema, or brings it to this code's version (migrations.py), with
        the version it reaches; run under the advisory lock, so one gateway migrates and the others wait."""
        tables = {row[0] for row in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        if "collections" not in tables:
            script, version = SCHEMA, SCHEMA_VERSION
        else:
            found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            columns: dict[str, set[str]] = {}
            for table, column in connection.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema()"):
                columns.setdefault(table, set()).add(column)
            steps = steps_from(int(found[0]) if found else unversioned(columns))
            script = "".join(step.sql["postgres"] for step in steps)
            version = steps[-1].version if steps else SCHEMA_VERSION
        return script, version

    def close(self) -> None:
        self._pool.close()
        self._watchdog.close()

    @contextmanager
    def _write_transaction(self) -> Iterator[Transaction]:
        with self._transaction(log_lock=True) as tx:
            yield tx

    @contextmanager
    def _claim_transaction(self) -> Iterator[Transaction]:
        with self._transaction(log_lock=False) as tx:
            yield tx

    @contextmanager
    def _transaction(self, log_lock: bool) -> Iterator[Transaction]:
        """A connection from the pool (which replaces broken ones, so the database coming back is
        enough to recover) in one transaction. Losing the connection while COMMIT is in flight
        leaves the outcome unknown, and says so."""
        committing = False
        try:
            with self._pool.connection() as connection, self._watchdog.watching(connection), \
                    connection.transaction():
                if log_lock:
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
                yield _Cursor(connection)
                committing = True
        except psycopg.OperationalError as error:
            if committing and not isinstance(error, psycopg.errors.DiskFull):  # a refused COMMIT is known failed
                raise WriteOutcomeUnknown(
                    "the connection to the database was lost while it committed: the write may or may not "
                    "have been stored; retrying is safe for adds (idempotent by item id)"
                ) from error
            raise

    def _rows(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._pool.connection() as connection, self._watchdog.watching(connection):
            return connection.execute(_postgres(sql), tuple(parameters)).fetchall()

    def _translate(self, error: Exception) -> FocalServeError | None:
        if isinstance(error, psycopg.errors.DiskFull):
            return InsufficientStorage("the database's disk is full; nothing was stored")
        # a lost or refused connection, a pool with none to give, a standby that refuses writes (fail-over)
        if isinstance(error, (psycopg.OperationalError, PoolTimeout, psycopg.errors.ReadOnlySqlTransaction)):
            return DatabaseUnavailable(
                f"the collection database is unavailable ({type(error).__name__}); retry shortly"
            )
        return super()._translate(error)

    def _metadata_equals(self) -> str:
        return "(metadata::jsonb -> ?) = ?::jsonb"

    def _next_chunk(self) -> str:
        return (
            "SELECT rowid FROM chunks WHERE condition = ? AND done = 0 "
            f"AND (lease_until IS NULL OR lease_until < {self.NOW} OR owner = ?) ORDER BY rowid LIMIT 1 "
            "FOR UPDATE SKIP LOCKED"
        )

    def _put_blob(self, tx: Transaction, digest: str, data: bytes) -> None:
        tx.execute("INSERT INTO blobs(digest, data) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING", (digest, data))

    def _put_blobs(self, tx: Transaction, blobs: dict[str, bytes]) -> None:
        assert isinstance(tx, _Cursor)
        if not blobs:
            return
        tx.copy_into("staged_blobs", list(blobs.items()))
        tx.execute("INSERT INTO blobs(digest, data) SELECT digest, data FROM staged_blobs WHERE true "
                   "ON CONFLICT (digest) DO NOTHING")

    def _stage(self, tx: Transaction, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        assert isinstance(tx, _Cursor)
        tx.copy_into(table, rows)

    def _probe_disk(self) -> None:
        """Nothing: image bytes are rows too, so the probe's row is the whole test."""

    def _blob(self, digest: str) -> bytes:
        return bytes(self._rows("SELECT data FROM blobs WHERE digest = ?", (digest,))[0][0])

    def collect_garbage(self) -> int:
        """Under the log lock, so no add can be about to refer to a blob it drops."""
        with self._write() as tx:
            return int(tx.execute(
                "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM items WHERE items.blob = blobs.digest)"
            ).rowcount)
