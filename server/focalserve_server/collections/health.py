"""How the disk and the database beneath the store are doing, as the store's own calls find them.

Every store call reports its outcome here, so `/readyz` can say what is failing and since when, and
`/metrics` can export it: an operator learns of a full disk or a lost database from the gateway,
not from users. A failure clears by itself with the next call that proves it over: any successful
call for the database, a successful write (or `Store.probe_write`, which `/readyz` runs while
writes fail) for the disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from focalserve_server.errors import DatabaseUnavailable, FocalServeError, InsufficientStorage, WriteOutcomeUnknown

Part = Literal["storage", "database"]
PARTS: tuple[Part, ...] = ("storage", "database")


@dataclass(frozen=True)
class Failure:
    message: str
    since: float  # time.time() of the first failure of this outage
    errors: int  # failed calls in this outage


class StoreHealth:
    """The parts failing now; thread-safe (store calls run in worker threads)."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self._on_error = on_error or (lambda code: None)  # counts every failed call, by error code
        self._failing: dict[Part, Failure] = {}
        self._lock = threading.Lock()

    @staticmethod
    def part_of(error: FocalServeError) -> Part | None:
        if isinstance(error, InsufficientStorage):
            return "storage"
        if isinstance(error, (DatabaseUnavailable, WriteOutcomeUnknown)):
            return "database"
        return None

    def failed(self, error: FocalServeError) -> None:
        part = self.part_of(error)
        if part is None:
            return
        with self._lock:
            previous = self._failing.get(part)
            since, errors = (previous.since, previous.errors) if previous else (time.time(), 0)
            self._failing[part] = Failure(error.message, since, errors + 1)
        self._on_error(error.code)

    def succeeded(self, wrote: bool) -> None:
        if not self._failing:  # the common case, without the lock
            return
        with self._lock:
            self._failing.pop("database", None)
            if wrote:
                self._failing.pop("storage", None)

    def failing(self) -> dict[Part, Failure]:
        with self._lock:
            return dict(self._failing)
