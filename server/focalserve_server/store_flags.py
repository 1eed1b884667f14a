"""The flags of the commands that work on a store directly (`focalserve keys`, `backup`, `restore`):
the same store `focalserve serve`'s settings choose, or the one the flags name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from focalserve_server.config import Settings


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="the SQLite store's data dir (env FOCALSERVE_DATA_DIR)")
    parser.add_argument("--database-url", help="a PostgreSQL store (env FOCALSERVE_DATABASE_URL)")


def store_settings(args: argparse.Namespace, command: str) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = SecretStr(args.database_url)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        sys.exit(f"focalserve {command}: {error}")
