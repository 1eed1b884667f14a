"""`focalserve backup DEST` and `focalserve restore SRC`: the store that `focalserve serve`'s settings
choose (FOCALSERVE_DATA_DIR or FOCALSERVE_DATABASE_URL), or the one the flags name. A backup runs
while gateways serve; a restore goes into an empty store, with the gateways stopped (README: Operating)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from focalserve_server.collections import backup
from focalserve_server.store_flags import add_store_flags, store_settings


def add_backup_command(subcommands: argparse._SubParsersAction) -> None:
    made = subcommands.add_parser("backup", help="back the store up into a new folder, while gateways serve",
                                  description=__doc__)
    made.add_argument("destination", type=Path, help="a new or empty folder")
    add_store_flags(made)
    made.set_defaults(handler=_backup)


def add_restore_command(subcommands: argparse._SubParsersAction) -> None:
    restored = subcommands.add_parser("restore", help="restore a backup into an empty store", description=__doc__)
    restored.add_argument("source", type=Path, help="a folder `focalserve backup` wrote")
    add_store_flags(restored)
    restored.set_defaults(handler=_restore)


def _backup(args: argparse.Namespace) -> None:
    settings = store_settings(args, "backup")
    url = settings.database_url.get_secret_value()
    try:
        manifest = (backup.backup_postgres(url, args.destination) if url
                    else backup.backup_sqlite(settings.data_dir, args.destination))
    except backup.BackupError as error:
        sys.exit(f"focalserve backup: {error}")
    print(json.dumps(manifest))


def _restore(args: argparse.Namespace) -> None:
    settings = store_settings(args, "restore")
    url = settings.database_url.get_secret_value()
    try:
        manifest = (backup.restore_postgres(args.source, url) if url
                    else backup.restore_sqlite(args.source, settings.data_dir))
    except backup.BackupError as error:
        sys.exit(f"focalserve restore: {error}")
    print(json.dumps(manifest))
