"""The store an ingest writes to, chosen by the settings `focalserve serve` reads, and opened once
per Ray worker process (every task and actor of an ingest that runs there shares it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from focalserve_server.collections.factory import open_store
from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.store import Store
from focalserve_server.config import Settings


@dataclass(frozen=True)
class StoreAddress:
    """Where the collections live: PostgreSQL when `database_url` is set, else SQLite in `data_dir`
    (which every Ray node must see: on a cluster, use PostgreSQL)."""

    database_url: str
    data_dir: str

    @classmethod
    def of(cls, settings: Settings) -> StoreAddress:
        return cls(settings.database_url.get_secret_value(), str(settings.data_dir))

    def open(self) -> Store:
        return _opened(self)


@functools.cache
def _opened(address: StoreAddress) -> Store:
    settings = Settings(data_dir=Path(address.data_dir), database_url=SecretStr(address.database_url))
    return open_store(settings, StoreHealth())
