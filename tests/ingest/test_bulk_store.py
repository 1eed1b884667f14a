"""`Store.put_block`, the bulk write under `focalserve ingest`, on both engines: one transaction and
one change-log entry per block, idempotent on retry, never changing a stored item, adding only the
vectors stored items lack, and refusing a block embedded under conditions that changed since."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from focalserve_server.collections.model import BlockItem, ConditionsChanged
from focalserve_server.collections.postgres import PostgresStore
from focalserve_server.collections.sqlite import SQLiteStore
from focalserve_server.collections.store import Store

DIM = 8


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[Store]:
    opened: Store = (SQLiteStore(tmp_path) if request.param == "sqlite"
                     else PostgresStore(request.getfixturevalue("postgres_url")))
    yield opened
    opened.close()


def block(conditions: list[int], first: int, count: int, keep: bool = True) -> list[BlockItem]:
    generator = np.random.default_rng(first)
    return [BlockItem(id=f"img-{n}", digest=f"{n:064x}", source=f"/library/img-{n}.png",
                      image=f"bytes of {n}".encode() if keep else None, metadata={"n": n},
                      vectors={c: generator.standard_normal(DIM).astype(np.float32) for c in conditions})
            for n in range(first, first + count)]


def test_a_block_is_one_log_entry_and_its_retry_changes_nothing(store):
    store.create_collection("library", "tiny")
    [(colour, _)], _ = store.add_conditions("library", ["colour"], "auto", 64)
    items = block([colour.rowid], 0, 50)
    head = store.head()

    written = store.put_block("library", items, {colour.rowid})
    assert (written.items, written.vectors) == (50, 50)
    [change] = store.changes(head, 100)
    assert (change.kind, change.seq, change.last_item - change.item + 1) == ("block", written.seq, 50)
    ids, vectors = store.block_vectors(change.item, change.last_item)[colour.rowid]
    np.testing.assert_array_equal(vectors[0], items[0].vectors[colour.rowid])
    assert len(ids) == 50

    again = store.put_block("library", block([colour.rowid], 0, 50), {colour.rowid})
    assert (again.items, again.vectors, again.seq) == (0, 0, None)
    assert store.head() == written.seq and store.item_count("library") == 50
    item = store.item("library", "img-7")
    assert item is not None and (item.source, item.kept, item.metadata) == ("/library/img-7.png", True, {"n": 7})
    assert store.read_blob(item.blob) == b"bytes of 7"
    assert store.complete_ids("library", ["img-7", "img-99"], [colour.rowid]) == {"img-7"}


def test_a_stored_item_gets_only_the_vectors_it_lacks_logged_one_by_one(store):
    store.create_collection("library", "tiny")
    [(colour, _)], _ = store.add_conditions("library", ["colour"], "auto", 64)
    store.put_block("library", block([colour.rowid], 0, 10, keep=False), {colour.rowid})
    [(shape, _)], _ = store.add_conditions("library", ["shape"], "auto", 64)
    assert store.complete_ids("library", ["img-1"], [colour.rowid, shape.rowid]) == set()
    head = store.head()

    written = store.put_block("library", block([colour.rowid, shape.rowid], 5, 10), {colour.rowid, shape.rowid})
    assert (written.items, written.vectors) == (5, 15)  # img-10..14 under both; img-5..9 under shape only
    changes = store.changes(head, 100)
    assert [c.kind for c in changes].count("vector") == 5 and [c.kind for c in changes].count("block") == 1
    assert store.vector_count(shape.rowid) == 10 and store.vector_count(colour.rowid) == 15
    stored_lean = store.item("library", "img-5")
    assert stored_lean is not None and not stored_lean.kept  # a stored item keeps what it had


def test_a_block_embedded_under_other_conditions_is_refused_whole(store):
    store.create_collection("library", "tiny")
    [(colour, _)], _ = store.add_conditions("library", ["colour"], "auto", 64)
    store.add_conditions("library", ["shape"], "auto", 64)
    with pytest.raises(ConditionsChanged):
        store.put_block("library", block([colour.rowid], 0, 5), {colour.rowid})
    assert store.item_count("library") == 0
