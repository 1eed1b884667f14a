"""The store's schema versions, and the steps from each to the next.

A new store is made at the newest version in one go (each engine's `SCHEMA`); an older one is
brought forward a step at a time, in the transaction that also records `meta.schema_version`, under
the engine's lock (PostgreSQL's advisory lock, SQLite's write lock): one gateway migrates, the
others wait and find it done. A store newer than this code is refused (`SchemaTooNew`): a gateway
never writes to tables it does not know. Stores from before versions were recorded (up to 3) are
placed by the columns they have.

Adding a step: append a `Migration` with the next version, for both engines, and change each
engine's `SCHEMA` to the result; `tests/integration/test_migrations.py` upgrades a store the
previous release made (`tests/fixtures/previous_release/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from focalserve_server.access.records import ACCESS_TABLES

Engine = Literal["sqlite", "postgres"]
SERIAL: dict[Engine, str] = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
                             "postgres": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"}
REPLICAS_TABLE = """
-- how far each replica (a gateway's data dir) has applied the log: compaction keeps what one lacks
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, applied BIGINT NOT NULL, seen DOUBLE PRECISION NOT NULL);
"""


# the tables version 4 added, which each engine's SCHEMA makes too
TABLES_OF_4: dict[Engine, str] = {engine: ACCESS_TABLES.format(serial=SERIAL[engine]) + REPLICAS_TABLE
                                  for engine in SERIAL}


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    sql: dict[Engine, str]


def _same(sql: str) -> dict[Engine, str]:
    return {"sqlite": sql, "postgres": sql}


MIGRATIONS = (
    Migration(2, "index options per condition",
              _same("ALTER TABLE conditions ADD COLUMN index_options TEXT NOT NULL DEFAULT '{}';")),
    Migration(3, "bulk ingest: an item's source and whether its bytes are kept; one log entry per block", {
        "sqlite": "ALTER TABLE items ADD COLUMN source TEXT; ALTER TABLE items ADD COLUMN kept INTEGER NOT NULL "
                  "DEFAULT 1; ALTER TABLE changes ADD COLUMN last_item INTEGER;",
        "postgres": "ALTER TABLE items ADD COLUMN source TEXT; ALTER TABLE items ADD COLUMN kept INTEGER NOT NULL "
                    "DEFAULT 1; ALTER TABLE changes ADD COLUMN last_item BIGINT; "
                    "ALTER TABLE items DROP CONSTRAINT IF EXISTS items_blob_fkey;",
    }),
    Migration(4, "keys, grants, the audit trail, shared limits; replicas' log positions", TABLES_OF_4),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    def __init__(self, found: int) -> None:
        super().__init__(f"the store's schema is version {found}, newer than this gateway's ({SCHEMA_VERSION}): "
                         "a newer release made or migrated it; run that release (README: Operating, upgrades)")
        self.found = found


def steps_from(version: int) -> list[Migration]:
    """The migrations a store at `version` needs, in order."""
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version)
    return [migration for migration in MIGRATIONS if migration.version > version]


def unversioned(columns: dict[str, set[str]]) -> int:
    """The version of a store made before versions were recorded, from its tables' columns."""
    if "kept" in columns.get("items", set()):
        return 3
    if "index_options" in columns.get("conditions", set()):
        return 2
    return 1


def statements(sql: str) -> list[str]:
    """A script as single statements (SQLite runs one per call); the DDL here holds no ';' in literals."""
    return [statement.strip() for statement in sql.split(";") if statement.strip()]
