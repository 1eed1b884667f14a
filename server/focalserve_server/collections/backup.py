"""Backups of the store, and restoring one: the store is the one source of truth, so a backup of it
is a backup of everything (FAISS indexes are rebuilt from it).

- SQLite: SQLite's online backup API copies the database while gateways keep writing (a consistent
  snapshot of one moment), then exactly the image files that snapshot refers to.
- PostgreSQL: `pg_dump` (one consistent snapshot, custom format) and `pg_restore`. For point-in-time
  recovery, archive PostgreSQL's WAL as well (README: Operating).

A restored store gets a new identity, so no gateway replays its newer index snapshots onto it: each
rebuilds from the restored store. A folder holds one backup and `backup.json`, which says what it is.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from focalserve_server.collections.migrations import SCHEMA_VERSION

MANIFEST = "backup.json"
SQLITE_FILE = "focalserve.sqlite3"
PG_DUMP_FILE = "focalserve.dump"
PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's; PATH is tried first


class BackupError(RuntimeError):
    """A backup or restore cannot go on; the message says why and what to do."""


def backup_sqlite(data_dir: Path, destination: Path) -> dict[str, Any]:
    source = data_dir / SQLITE_FILE
    if not source.exists():
        raise BackupError(f"no store in {data_dir} (no {SQLITE_FILE})")
    _empty_folder(destination)
    with sqlite3.connect(source) as live, sqlite3.connect(destination / SQLITE_FILE) as copy:
        live.backup(copy)  # pages copied in steps; a write meanwhile restarts the copy, so it is one moment
    with sqlite3.connect(destination / SQLITE_FILE) as copy:
        digests = [row[0] for row in copy.execute("SELECT DISTINCT blob FROM items WHERE kept = 1")]
        head = int(copy.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
    for digest in digests:  # written before the rows that refer to them committed: all are there
        relative = Path("blobs") / digest[:2] / digest
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / relative, destination / relative)
    return _manifest(destination, "sqlite", head=head, images=len(digests))


def restore_sqlite(backup: Path, data_dir: Path) -> dict[str, Any]:
    manifest = _checked_manifest(backup, "sqlite")
    if (data_dir / SQLITE_FILE).exists():
        raise BackupError(f"{data_dir} already holds a store: restore into an empty data dir (stop the gateways, "
                          "move the old one aside)")
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(backup / "blobs", data_dir / "blobs", dirs_exist_ok=True)
    shutil.copy2(backup / SQLITE_FILE, data_dir / SQLITE_FILE)
    with sqlite3.connect(data_dir / SQLITE_FILE) as restored:
        restored.execute("UPDATE meta SET value = ? WHERE key = 'identity'", (_new_identity(),))
    return manifest


def backup_postgres(url: str, destination: Path) -> dict[str, Any]:
    _empty_folder(destination)
    _run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
          f"--file={destination / PG_DUMP_FILE}", url])
    return _manifest(destination, "postgres")


def restore_postgres(backup: Path, url: str) -> dict[str, Any]:
    """Into an existing, empty database (`createdb` it first); in one transaction: all or nothing."""
    manifest = _checked_manifest(backup, "postgres")
    _run([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
          f"--dbname={url}", str(backup / PG_DUMP_FILE)])
    import psycopg  # only where PostgreSQL is used

    with psycopg.connect(url, autocommit=True) as restored:
        restored.execute("UPDATE meta SET value = %s WHERE key = 'identity'", (_new_identity(),))
    return manifest


def _new_identity() -> str:
    """A restored store is another store: gateways' index snapshots of the original do not apply to it."""
    return uuid.uuid4().hex


def _manifest(destination: Path, engine: str, **facts: Any) -> dict[str, Any]:
    manifest = {"engine": engine, "schema_version": SCHEMA_VERSION, "created": time.time(), **facts}
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _checked_manifest(backup: Path, engine: str) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((backup / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise BackupError(f"{backup} is not a backup ({MANIFEST}: {error})") from None
    if manifest.get("engine") != engine:
        raise BackupError(f"{backup} is a backup of a {manifest.get('engine')} store, not of a {engine} one")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise BackupError(f"{backup} holds schema version {manifest['schema_version']}, newer than this release's "
                          f"({SCHEMA_VERSION}): restore it with the release that made it")
    return manifest


def _empty_folder(destination: Path) -> None:
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty: a backup goes into a new folder")
    destination.mkdir(parents=True, exist_ok=True)


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client-15)")
    return found


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]}")
