"""Schema versions on both engines: a store the previous release made (`tests/fixtures/previous_release/`,
built by that release's code) upgrades with every item, vector and condition intact; a new store
starts at the newest version; a store newer than the code is refused, naming both versions."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import psycopg
import pytest

from focalserve_server.collections.migrations import SCHEMA_VERSION, SchemaTooNew
from focalserve_server.collections.postgres import PostgresStore
from focalserve_server.collections.sqlite import SQLiteStore
from focalserve_server.collections.store import Store

PREVIOUS = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release"


def _fixture_builder() -> ModuleType:
    """The builder of the fixture, which also says what the fixture holds."""
    spec = importlib.util.spec_from_file_location("previous_release_build", PREVIOUS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILT = _fixture_builder()
COLLECTION, INSTRUCTIONS = BUILT.COLLECTION, BUILT.INSTRUCTIONS


def previous_sqlite(tmp_path: Path) -> Path:
    data_dir = tmp_path / "previous"
    shutil.copytree(PREVIOUS / "sqlite", data_dir)
    return data_dir


def previous_postgres(url: str) -> None:
    dump = "\n".join(line for line in (PREVIOUS / "postgres.sql").read_text().splitlines()
                     if not line.startswith("\\"))  # psql's own commands (\restrict): not SQL
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(dump)  # type: ignore[arg-type]  # a trusted file of this repository
        connection.execute("SELECT pg_catalog.set_config('search_path', 'public', false)")


@pytest.fixture(params=["sqlite", "postgres"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        store: Store = SQLiteStore(previous_sqlite(tmp_path))
    else:
        url = request.getfixturevalue("postgres_url")
        previous_postgres(url)
        store = PostgresStore(url)
    yield store
    store.close()


def schema_version(store: Store) -> int:
    return int(store._query("SELECT value FROM meta WHERE key = 'schema_version'")[0][0])


def test_a_store_of_the_previous_release_upgrades_with_everything_intact(upgraded):
    assert schema_version(upgraded) == SCHEMA_VERSION
    conditions = upgraded.conditions(COLLECTION)
    assert [c.instruction for c in conditions] == INSTRUCTIONS
    assert all(c.status == "ready" and c.index_options == {"nprobe": 4} for c in conditions)
    want = BUILT.expected()
    items = upgraded.items(COLLECTION, limit=100)
    assert [(i.id, i.metadata, i.source, i.kept) for i in items] == [
        (item_id, metadata, None, True) for item_id, _, metadata in want["items"]]
    for item, (_, image, _) in zip(items, want["items"], strict=True):
        assert upgraded.read_blob(item.blob) == image
        for condition in conditions:
            stored = upgraded.vector(condition.rowid, item.rowid)
            assert stored is not None and np.array_equal(stored, want["vectors"][item.id, condition.instruction])
    # what the new version added works on the upgraded store
    upgraded.heartbeat("r", upgraded.head())
    assert upgraded.access_version() == 0 and upgraded.keys() == []


def test_a_new_store_starts_at_the_newest_version_and_a_newer_one_is_refused(tmp_path, postgres_url):
    sqlite = SQLiteStore(tmp_path / "new")
    assert schema_version(sqlite) == SCHEMA_VERSION
    with sqlite._write() as tx:
        tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    sqlite.close()
    newer = f"version {SCHEMA_VERSION + 1}, newer than this gateway's \\({SCHEMA_VERSION}\\)"
    with pytest.raises(SchemaTooNew, match=newer):
        SQLiteStore(tmp_path / "new")
    postgres = PostgresStore(postgres_url)
    with postgres._write() as tx:
        tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    postgres.close()
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1}"):
        PostgresStore(postgres_url)
