"""Writing embedded rows into a collection: each write task's rows are one store transaction
(`Store.put_block`: binary COPY into staging tables and one upsert on PostgreSQL, batched inserts
on SQLite) with one change-log entry, so running gateways take the new items in through the log
as they take API writes. Rows that failed to prepare are not written: they come back to the
driver for the report.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import WriteResult

from focalserve_ingest.collection import INGEST_ACTOR
from focalserve_ingest.stores import StoreAddress
from focalserve_server.collections.model import BlockItem


@dataclass
class Written:
    """What one write task (or, summed, the whole run) stored and refused."""

    items: int = 0  # new items
    already_stored: int = 0  # items the store had (a retried block, or ids repeated in the source)
    vectors: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # {"id", "source", "error"}

    def add(self, other: Written) -> None:
        self.items += other.items
        self.already_stored += other.already_stored
        self.vectors += other.vectors
        self.failures += other.failures


class RowsSink(Datasink[Written], ABC):
    """Splits each write task's rows into failures (reported) and embedded rows (`_store`)."""

    def __init__(self, rows_per_write: int) -> None:
        self._rows_per_write = rows_per_write
        self.written = Written()  # filled on the driver when the run completes

    @property
    def min_rows_per_write(self) -> int:
        return self._rows_per_write

    def write(self, blocks: Iterable[Block], ctx: Any) -> Written:
        written = Written()
        good: list[dict[str, Any]] = []
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:  # every row of it was stored before (a rerun)
                continue
            rows = accessor.to_batch_format("numpy")
            assert isinstance(rows, dict)  # a table's columns, by name
            for row in range(len(rows["id"])):
                record = {name: column[row] for name, column in rows.items()}
                if record["error"]:
                    written.failures.append({key: str(record[key]) for key in ("id", "source", "error")})
                else:
                    good.append(record)
        if good:
            self._store(good, written)
        return written

    @abstractmethod
    def _store(self, rows: list[dict[str, Any]], written: Written) -> None:
        """Store embedded rows, counting what was stored into `written`."""

    def on_write_complete(self, write_result: WriteResult[Written]) -> None:
        for part in write_result.write_returns:
            self.written.add(part)


class CollectionSink(RowsSink):
    def __init__(self, store: StoreAddress, collection: str, conditions: list[int], rows_per_write: int) -> None:
        super().__init__(rows_per_write)
        self._store_address = store
        self._collection = collection
        self._conditions = conditions  # what each position of a row's `vectors` is under

    def get_name(self) -> str:
        return "WriteCollection"

    def _store(self, rows: list[dict[str, Any]], written: Written) -> None:
        items = [
            BlockItem(
                id=str(row["id"]), digest=str(row["digest"]), source=str(row["source"]),
                image=bytes(row["image"]) if row.get("image") else None, metadata=json.loads(row["metadata"]),
                vectors={condition: row["vectors"][number] for number, condition in enumerate(self._conditions)},
            )
            for row in rows
        ]
        stored = self._store_address.open().put_block(self._collection, items, set(self._conditions), INGEST_ACTOR)
        written.items, written.vectors = stored.items, stored.vectors
        written.already_stored = len(items) - stored.items
