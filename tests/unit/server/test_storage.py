"""The SQLite store: WAL, items and vectors, replacement, cascades, filters, blobs."""

from __future__ import annotations

import numpy as np
import pytest

from focalserve_server.storage import NewItem, Store


@pytest.fixture()
def store(tmp_path):
    store = Store(tmp_path)
    store.create_collection("c", "demo")
    yield store
    store.close()


def vec(seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def test_wal_mode_and_full_sync(store):
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert store._query("PRAGMA synchronous")[0][0] == 2  # FULL


def test_create_collection_once(store):
    assert not store.create_collection("c", "demo")
    assert store.collection("c").model == "demo" and store.collection("nope") is None


def test_items_and_vectors_round_trip_and_replace(store):
    condition, created = store.add_condition("c", "what colour?", "flat")
    assert created and condition.status == "building"
    rowids = store.put_items("c", [NewItem("a", b"img-a", {"k": 1}, {condition.rowid: vec(1)}),
                                   NewItem("b", b"img-b", {"k": 2}, {condition.rowid: vec(2)})])
    stamp = store.vector_stamp(condition.rowid)
    np.testing.assert_array_equal(store.vector(condition.rowid, rowids[0]), vec(1))
    again = store.put_items("c", [NewItem("a", b"img-a2", {"k": 3}, {condition.rowid: vec(3)})])
    assert again == rowids[:1]  # the same item keeps its row, so FAISS ids stay valid
    assert store.item("c", "a").metadata == {"k": 3}
    np.testing.assert_array_equal(store.vector(condition.rowid, rowids[0]), vec(3))
    assert store.vector_stamp(condition.rowid) != stamp and store.vector_stamp(condition.rowid)[0] == 2
    ids, vectors = store.vectors(condition.rowid)
    assert list(ids) == rowids and vectors.shape == (2, 4)


def test_missing_items_drive_condition_builds(store):
    store.put_items("c", [NewItem(str(i), bytes([i]), {}, {}) for i in range(5)])
    condition, _ = store.add_condition("c", "shape?", "hnsw")
    missing = store.missing_items(condition.rowid, "c", 3)
    assert [item.id for item in missing] == ["0", "1", "2"]
    store.put_vectors(condition.rowid, {item.rowid: vec(item.rowid) for item in missing})
    assert [item.id for item in store.missing_items(condition.rowid, "c", 10)] == ["3", "4"]


def test_delete_cascades_to_vectors(store):
    condition, _ = store.add_condition("c", "x", "flat")
    [rowid] = store.put_items("c", [NewItem("a", b"a", {}, {condition.rowid: vec(0)})])
    assert store.delete_item("c", "a") == rowid
    assert store.delete_item("c", "a") is None
    assert store.vector(condition.rowid, rowid) is None and store.vector_count(condition.rowid) == 0
    store.put_vectors(condition.rowid, {rowid: vec(0)})  # a build that raced the delete writes nothing
    assert store.vector_count(condition.rowid) == 0


def test_metadata_equality_filter(store):
    store.put_items("c", [NewItem("a", b"a", {"colour": "red", "n": 1, "ok": True}, {}),
                          NewItem("b", b"b", {"colour": "blue", "n": 1, "ok": False}, {}),
                          NewItem("c", b"c", {"colour": "red", "n": 2}, {})])
    by = {item.rowid: item.id for item in store.items("c")}
    assert {by[r] for r in store.matching_rowids("c", {"colour": "red"})} == {"a", "c"}
    assert {by[r] for r in store.matching_rowids("c", {"colour": "red", "n": 1})} == {"a"}
    assert {by[r] for r in store.matching_rowids("c", {"ok": True})} == {"a"}
    assert len(store.matching_rowids("c", {"colour": "green"})) == 0
    assert len(store.matching_rowids("c", {'x") OR 1=1 --': "y"})) == 0  # keys are parameters, not SQL


def test_blobs_are_content_addressed_and_collected(store, tmp_path):
    store.put_items("c", [NewItem("a", b"same", {}, {}), NewItem("b", b"same", {}, {})])
    assert len(list(store.blob_dir.glob("*/*"))) == 1
    assert store.read_blob(store.item("c", "a").blob) == b"same"
    store.delete_collection("c")
    assert store.collect_garbage(min_age_s=0) == 1 and not list(store.blob_dir.glob("*/*"))


def test_deleting_a_collection_removes_everything(store):
    condition, _ = store.add_condition("c", "x", "flat")
    store.put_items("c", [NewItem("a", b"a", {}, {condition.rowid: vec(0)})])
    assert store.delete_collection("c")
    assert store.collection("c") is None and store.conditions("c") == [] and store.item_count("c") == 0
    assert store.vector_count(condition.rowid) == 0
