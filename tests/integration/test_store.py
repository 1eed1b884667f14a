"""The store, on both engines (SQLite and a real PostgreSQL): items and vectors, replacement,
cascades, filters, image bytes, the change log, leased build chunks, and failed writes."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from focalserve_server.collections.model import ConditionsChanged, LogCompacted, NewItem
from focalserve_server.collections.postgres import PostgresStore
from focalserve_server.collections.sqlite import SQLiteStore
from focalserve_server.collections.store import Store
from focalserve_server.errors import DatabaseUnavailable, InsufficientStorage


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path)
    else:
        store = PostgresStore(request.getfixturevalue("postgres_url"))
    assert store.create_collection("c", "demo")
    yield store
    store.close()


def vec(seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def kinds(store: Store, after: int = 0) -> list[tuple[str, int | None, int | None]]:
    return [(c.kind, c.condition, c.item) for c in store.changes(after, 100)]


def test_create_collection_once_and_log_it(store):
    assert store.create_collection("c", "demo") is None
    assert store.collection("c").model == "demo" and store.collection("nope") is None
    assert kinds(store) == [("collection_created", None, None)]


def test_items_and_vectors_round_trip_replace_and_log(store):
    condition, created, _ = store.add_condition("c", "what colour?", "flat", chunk_size=8)
    assert created and condition.status == "building"
    head = store.head()
    rowids, seq = store.put_items("c", [NewItem("a", b"img-a", {"k": 1}, {condition.rowid: vec(1)}),
                                        NewItem("b", b"img-b", {"k": 2}, {condition.rowid: vec(2)})],
                                  {condition.rowid})
    assert seq == store.head() > head
    assert kinds(store, head) == [("vector", condition.rowid, rowids[0]), ("vector", condition.rowid, rowids[1])]
    np.testing.assert_array_equal(store.vector(condition.rowid, rowids[0]), vec(1))
    again, _ = store.put_items("c", [NewItem("a", b"img-a2", {"k": 3}, {condition.rowid: vec(3)})], {condition.rowid})
    assert again == rowids[:1]  # the same item keeps its row, so FAISS ids stay valid
    assert store.item("c", "a").metadata == {"k": 3} and store.read_blob(store.item("c", "a").blob) == b"img-a2"
    np.testing.assert_array_equal(store.vector(condition.rowid, rowids[0]), vec(3))
    ids, vectors = store.all_vectors(condition.rowid)
    assert list(ids) == rowids and vectors.shape == (2, 4)
    found = store.vectors_of([(condition.rowid, rowids[1]), (condition.rowid, 10**9)])
    assert list(found) == [(condition.rowid, rowids[1])]


def test_an_add_embedded_before_a_new_condition_is_refused_with_the_conditions(store):
    condition, _, _ = store.add_condition("c", "shape?", "flat", chunk_size=8)
    with pytest.raises(ConditionsChanged) as changed:
        store.put_items("c", [NewItem("a", b"a", {}, {})], set())
    assert [c.rowid for c in changed.value.conditions] == [condition.rowid]
    assert store.item_count("c") == 0


def test_delete_cascades_to_vectors_and_is_logged(store):
    condition, _, _ = store.add_condition("c", "x", "flat", chunk_size=8)
    [rowid], _ = store.put_items("c", [NewItem("a", b"a", {}, {condition.rowid: vec(0)})], {condition.rowid})
    head = store.head()
    assert store.delete_item("c", "a") == store.head() and store.delete_item("c", "a") is None
    assert store.vector(condition.rowid, rowid) is None and store.vector_count(condition.rowid) == 0
    assert kinds(store, head) == [("item_deleted", None, rowid)]
    assert store.delete_collection("c") == store.head() and store.conditions("c") == []


def test_metadata_equality_filter(store):
    store.put_items("c", [NewItem("a", b"a", {"colour": "red", "n": 1}, {}), NewItem("b", b"b", {"colour": "blue"}, {}),
                          NewItem("c", b"c", {"colour": "red", "n": 2}, {})], set())
    red = store.matching_rowids("c", {"colour": "red"})
    assert sorted(store.items_by_rowid(red.tolist())[r].id for r in red) == ["a", "c"]
    assert len(store.matching_rowids("c", {"colour": "red", "n": 2})) == 1


def test_a_condition_backfill_is_cut_into_chunks_that_leases_share(store):
    rowids, _ = store.put_items("c", [NewItem(str(i), bytes([i]), {}, {}) for i in range(5)], set())
    condition, _, _ = store.add_condition("c", "shape?", "hnsw", chunk_size=2)
    first = store.claim_chunk(condition.rowid, "replica-1", lease_s=60)
    second = store.claim_chunk(condition.rowid, "replica-2", lease_s=60)
    assert (first.first, first.last, second.first, second.last) == (rowids[0], rowids[1], rowids[2], rowids[3])
    assert [i.rowid for i in store.missing_in_chunk(first)] == rowids[:2]
    assert store.finish_chunk(first, "replica-2", {r: vec(r) for r in rowids[:2]}) is None  # not its lease
    assert store.finish_chunk(first, "replica-1", {r: vec(r) for r in rowids[:2]}) == store.head()
    assert store.vector_count(condition.rowid) == 2 and not store.complete_build(condition.rowid)
    third = store.claim_chunk(condition.rowid, "replica-1", lease_s=0.2)
    assert store.claim_chunk(condition.rowid, "replica-3", lease_s=60) is None  # all leased
    # a replica whose build step failed (the database went away) takes its own chunk up again at once
    assert store.claim_chunk(condition.rowid, "replica-2", lease_s=60).rowid == second.rowid
    time.sleep(0.4)  # replica-1 "dies": its lease expires and the chunk comes back
    retaken = store.claim_chunk(condition.rowid, "replica-3", lease_s=60)
    assert retaken is not None and retaken.rowid == third.rowid
    assert store.finish_chunk(third, "replica-1", {}) is None
    store.finish_chunk(retaken, "replica-3", {rowids[4]: vec(4)})
    store.finish_chunk(second, "replica-2", {r: vec(r) for r in rowids[2:4]})
    assert store.complete_build(condition.rowid)
    assert store.conditions("c")[0].status == "ready" and store.vector_count(condition.rowid) == 5


def test_the_database_has_one_identity(store):
    assert store.identity() == store.identity() and len(store.identity()) == 32


def test_a_failed_write_leaves_nothing_and_reports_the_part_that_failed(store):
    class DiskGone(Exception):
        pass

    with pytest.raises(DiskGone), store._write() as tx:  # a write that fails half-way through
        store._put_blob(tx, "ab" * 32, b"image bytes")
        tx.execute("INSERT INTO collections(name, model) VALUES (?, ?)", ("half", "demo"))
        raise DiskGone
    assert store.collection("half") is None
    if isinstance(store, SQLiteStore):
        assert not list(store.blob_dir.glob("*/*"))  # the blob file went with the rows
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(InsufficientStorage), store._write():
        raise full
    assert set(store.health.failing()) == {"storage"}
    store.probe_write()  # space is back: the probe clears the report
    assert store.health.failing() == {}


def test_database_errors_translate_to_what_a_client_can_act_on(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        assert isinstance(store._translate(psycopg.errors.DiskFull()), InsufficientStorage)
        assert isinstance(store._translate(psycopg.errors.ReadOnlySqlTransaction()), DatabaseUnavailable)  # fail-over
        assert isinstance(store._translate(psycopg.OperationalError("server closed the connection")),
                          DatabaseUnavailable)
        assert store._translate(psycopg.errors.UndefinedTable()) is None  # a bug stays a bug
    finally:
        store.close()


def test_image_bytes_of_replaced_and_deleted_items_are_collected(store):
    if isinstance(store, SQLiteStore):
        store.blob_grace_s = 0  # no add is in flight here
    store.put_items("c", [NewItem("a", b"first", {}, {}), NewItem("b", b"second", {}, {})], set())
    store.put_items("c", [NewItem("a", b"replaced", {}, {})], set())
    store.delete_item("c", "b")
    assert store.collect_garbage() == 2  # b"first" and b"second"
    assert store.read_blob(store.item("c", "a").blob) == b"replaced" and store.collect_garbage() == 0


def test_the_log_compacts_below_every_recent_replica_and_says_what_is_gone(store, monkeypatch):
    for n in range(10):
        store.put_items("c", [NewItem(f"i{n}", bytes([n]), {}, {})], set())
    head = store.head()
    store.heartbeat("ahead", head)
    store.heartbeat("behind", head - 4)
    assert store.compact_log(retention_s=60, batch=3) == head - 4  # everything below, three to a transaction
    assert store.compacted_through() == head - 4 and [c.seq for c in store.changes(head - 4, 100)] == [
        head - 3, head - 2, head - 1, head]
    with pytest.raises(LogCompacted, match=f"compacted up to {head - 4}"):
        store.changes(head - 5, 100)
    # a replica silent past the retention is forgotten: the log goes up to the other's position, head kept
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    store.heartbeat("ahead", head)
    store.compact_log(retention_s=60, batch=1000)
    assert store.changes(head, 100) == [] and store.head() == head and store.compacted_through() == head
    store.put_items("c", [NewItem("next", b"n", {}, {})], set())
    assert [c.seq for c in store.changes(head, 100)] == [head + 1]  # numbering goes on past the compacted log


def test_sqlite_busy_past_its_timeout_is_database_unavailable(tmp_path):
    """Another process holding SQLite's write lock longer than the timeout: a 503, not a 500."""
    store = SQLiteStore(tmp_path, busy_timeout_s=0.2)
    holder = sqlite3.connect(tmp_path / "focalserve.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="busy past its timeout"):
            store.create_collection("blocked", "demo")
        assert time.monotonic() - started < 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.create_collection("blocked", "demo")
    store.close()


def test_one_thread_watches_every_postgres_call_and_closing_ends_it(postgres_url):
    """The statement watchdog adds one thread per store, not one per call (that was a thread start each)."""
    def watchdogs() -> int:
        return sum(thread.name == "focalserve-db-watchdog" for thread in threading.enumerate())

    before = watchdogs()
    store = PostgresStore(postgres_url)
    store.head()
    threads = threading.active_count()
    for _ in range(50):
        store.head()
    assert threading.active_count() == threads and watchdogs() == before + 1
    store.close()
    assert watchdogs() == before
