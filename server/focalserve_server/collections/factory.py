"""Choosing the store engine from the settings and assembling the collection service around it."""

from __future__ import annotations

import uuid

from focalserve_server.collections.builder import ConditionBuilder
from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.replica import LogRetention, Replica
from focalserve_server.collections.service import CollectionService
from focalserve_server.collections.sqlite import SQLiteStore
from focalserve_server.collections.store import Store
from focalserve_server.config import Settings
from focalserve_server.engine import Engine


def open_store(settings: Settings, health: StoreHealth) -> Store:
    """PostgreSQL when `database_url` is set (shared by every replica), else SQLite in the data dir."""
    url = settings.database_url.get_secret_value()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if url:
        from focalserve_server.collections.postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(url, wait_s=settings.database_timeout_s, health=health,
                             statement_timeout_s=settings.database_statement_timeout_s)
    return SQLiteStore(settings.data_dir, health, busy_timeout_s=settings.database_statement_timeout_s)


def collection_service(settings: Settings, store: Store, engine: Engine) -> CollectionService:
    replica = Replica(store, engine, settings.data_dir / "indexes", settings.log_poll_interval_s,
                      settings.index_policy(), LogRetention.of(settings.log_retention_s))
    owner = uuid.uuid4().hex  # this process, as the holder of build leases
    builder = ConditionBuilder(store, engine, replica, owner, settings.build_lease_s, settings.log_poll_interval_s)
    return CollectionService(store, engine, replica, builder, settings.build_chunk_size, settings.consistency_wait_s)
