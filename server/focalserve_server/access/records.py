"""Keys, grants, limits' counters and the audit trail, in the collection store's own database.

In the shared store (SQLite on one host, PostgreSQL for several gateways), so every gateway agrees
at once: a key made or revoked by one is known to the others at their next poll of
`access_version`, which every change to keys or grants bumps in the same transaction.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from focalserve_client.schemas import Action, KeyLimits
from focalserve_server.access.grants import Grant

# The tables, in SQL both engines run; `{serial}` is each engine's auto-numbered primary key.
ACCESS_TABLES = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL,
    limits TEXT NOT NULL DEFAULT '{{}}',
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION,
    revoked DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS grants (
    key_id TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    action TEXT NOT NULL,
    PRIMARY KEY (key_id, pattern)
);
CREATE TABLE IF NOT EXISTS audit (
    seq {serial},
    logged_at DOUBLE PRECISION NOT NULL,
    key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{{}}'
);
-- a key's use of one quota in one period, summed over gateways (`limits.SharedLimiter`)
CREATE TABLE IF NOT EXISTS quota_use (
    key_id TEXT NOT NULL,
    quota TEXT NOT NULL,
    period BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (key_id, quota, period)
);
-- request slots a gateway process holds for a key with a concurrency limit, until `expires`
CREATE TABLE IF NOT EXISTS key_slots (
    key_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    held INTEGER NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, holder)
);
"""


class Transaction(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any: ...


@dataclass(frozen=True)
class StoredKey:
    id: str
    name: str
    prefix: str
    hash: str
    limits: KeyLimits
    created: float
    last_used: float | None
    revoked: float | None
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: float
    key_id: str
    action: str
    target: str
    detail: dict[str, Any]


class AccessRecords:
    """The store's access tables; mixed into `Store`, whose transactions it uses."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Transaction]: ...

    @abstractmethod
    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    # keys and grants ----------------------------------------------------------------------

    def access_version(self) -> int:
        """Bumped by every change to keys or grants: a gateway reloads them when it moves."""
        rows = self._query("SELECT value FROM meta WHERE key = 'access_version'")
        return int(rows[0][0]) if rows else 0

    def keys(self) -> list[StoredKey]:
        grants: dict[str, list[Grant]] = {}
        for key_id, pattern, action in self._query("SELECT key_id, pattern, action FROM grants ORDER BY pattern"):
            grants.setdefault(key_id, []).append(Grant(pattern, cast(Action, action)))
        rows = self._query(
            "SELECT id, name, prefix, hash, limits, created, last_used, revoked FROM api_keys ORDER BY created, id"
        )
        return [
            StoredKey(key_id, name, prefix, hashed, KeyLimits.model_validate_json(limits), created, last_used, revoked,
                      tuple(grants.get(key_id, ())))
            for key_id, name, prefix, hashed, limits, created, last_used, revoked in rows
        ]

    def create_key(self, key_id: str, name: str, prefix: str, hashed: str, grants: Sequence[Grant],
                   limits: KeyLimits, actor: str) -> None:
        with self._write() as tx:
            tx.execute(
                "INSERT INTO api_keys(id, name, prefix, hash, limits, created) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, prefix, hashed, limits.model_dump_json(exclude_none=True), time.time()),
            )
            self._put_grants(tx, key_id, grants)
            self._changed(tx, actor, "key.create", key_id,
                          {"name": name, "grants": _shown(grants), "limits": limits.model_dump(exclude_none=True)})

    def rotate_key(self, key_id: str, prefix: str, hashed: str, actor: str) -> bool:
        """A new secret for a live key; the old one stops working at once."""
        with self._write() as tx:
            updated = tx.execute("UPDATE api_keys SET prefix = ?, hash = ? WHERE id = ? AND revoked IS NULL",
                                 (prefix, hashed, key_id)).rowcount
            if updated:
                self._changed(tx, actor, "key.rotate", key_id, {"prefix": prefix})
            return bool(updated)

    def revoke_key(self, key_id: str, actor: str) -> bool:
        """Kept, revoked, for the list and the audit trail; refused everywhere from the next poll."""
        with self._write() as tx:
            updated = tx.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                 (time.time(), key_id)).rowcount
            if updated:
                self._changed(tx, actor, "key.revoke", key_id, {})
            return bool(updated)

    def set_grants(self, key_id: str, grants: Sequence[Grant], actor: str) -> bool:
        """Replace a live key's grants."""
        with self._write() as tx:
            if not tx.execute("SELECT 1 FROM api_keys WHERE id = ? AND revoked IS NULL", (key_id,)).fetchall():
                return False
            tx.execute("DELETE FROM grants WHERE key_id = ?", (key_id,))
            self._put_grants(tx, key_id, grants)
            self._changed(tx, actor, "key.grants", key_id, {"grants": _shown(grants)})
            return True

    def record_use(self, last_used: dict[str, float]) -> None:
        """When keys were last used (batched by each gateway; not an access change)."""
        if last_used:
            with self._write() as tx:
                for key_id, used in last_used.items():
                    tx.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (used, key_id))

    def _put_grants(self, tx: Transaction, key_id: str, grants: Sequence[Grant]) -> None:
        for grant in grants:
            tx.execute("INSERT INTO grants(key_id, pattern, action) VALUES (?, ?, ?) ON CONFLICT (key_id, pattern) "
                       "DO UPDATE SET action = excluded.action", (key_id, grant.pattern, grant.action))

    def _changed(self, tx: Transaction, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('access_version', '1') ON CONFLICT (key) "
            "DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)"
        )
        self._audit(tx, actor, action, target, detail)

    # the audit trail ----------------------------------------------------------------------

    def _audited(self, tx: Transaction, actor: str | None, action: str, target: str, **detail: Any) -> None:
        """An entry for a collection write, in its transaction: both commit or neither; none without an actor
        (the store's own upkeep, tests)."""
        if actor is not None:
            self._audit(tx, actor, action, target, detail)

    def _audit(self, tx: Transaction, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        tx.execute("INSERT INTO audit(logged_at, key_id, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                   (time.time(), actor, action, target, json.dumps(detail, sort_keys=True)))

    def audit_trail(self, after: int, limit: int) -> list[AuditRecord]:
        rows = self._query("SELECT seq, logged_at, key_id, action, target, detail FROM audit WHERE seq > ? "
                           "ORDER BY seq LIMIT ?", (after, limit))
        return [AuditRecord(int(seq), at, key_id, action, target, json.loads(detail))
                for seq, at, key_id, action, target, detail in rows]

    # limits shared by the gateways ---------------------------------------------------------

    def lease_quota(self, key_id: str, quota: str, period: int, want: int, limit: int) -> tuple[int, int]:
        """Take up to `want` units of a key's quota in one period: (taken, now used in all). Earlier
        periods' rows of that quota go in the same transaction."""
        with self._write() as tx:
            tx.execute("DELETE FROM quota_use WHERE key_id = ? AND quota = ? AND period < ?", (key_id, quota, period))
            tx.execute("INSERT INTO quota_use(key_id, quota, period, used) VALUES (?, ?, ?, 0) "
                       "ON CONFLICT (key_id, quota, period) DO NOTHING", (key_id, quota, period))
            (used,) = tx.execute("SELECT used FROM quota_use WHERE key_id = ? AND quota = ? AND period = ?",
                                 (key_id, quota, period)).fetchone()
            taken = max(0, min(want, limit - int(used)))
            if taken:
                tx.execute("UPDATE quota_use SET used = used + ? WHERE key_id = ? AND quota = ? AND period = ?",
                           (taken, key_id, quota, period))
            return taken, int(used) + taken

    def claim_slot(self, key_id: str, holder: str, held: int, limit: int, expires: float) -> bool:
        """One more request slot of a key for `holder` (which holds `held`), if every live holder's
        together stay within `limit`; a holder that stopped renewing (a crashed gateway) counts no more."""
        with self._write() as tx:
            tx.execute("DELETE FROM key_slots WHERE expires < ?", (time.time(),))
            (others,) = tx.execute("SELECT coalesce(sum(held), 0) FROM key_slots WHERE key_id = ? AND holder <> ?",
                                   (key_id, holder)).fetchone()
            if int(others) + held + 1 > limit:
                return False
            tx.execute("INSERT INTO key_slots(key_id, holder, held, expires) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key_id, holder) DO UPDATE SET held = excluded.held, expires = excluded.expires",
                       (key_id, holder, held + 1, expires))
            return True

    def hold_slots(self, holder: str, held: dict[str, int], expires: float) -> None:
        """Renew what `holder` holds, giving back what it no longer needs."""
        with self._write() as tx:
            for key_id, count in held.items():
                if count:
                    tx.execute("UPDATE key_slots SET held = ?, expires = ? WHERE key_id = ? AND holder = ?",
                               (count, expires, key_id, holder))
                else:
                    tx.execute("DELETE FROM key_slots WHERE key_id = ? AND holder = ?", (key_id, holder))


def _shown(grants: Sequence[Grant]) -> list[str]:
    return [f"{grant.pattern}:{grant.action}" for grant in grants]
