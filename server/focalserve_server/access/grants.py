"""Grants and the principal a request acts as: what a key may see and do on each collection.

Default deny: a collection no grant of the key covers is answered exactly as one that does not
exist (404), so a key cannot even learn which names other teams use; a key that may see a
collection but not do what it asks gets 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from focalserve_client.schemas import Action, KeyLimits
from focalserve_server.errors import Forbidden, collection_not_found

RANK: dict[Action, int] = {"read": 1, "write": 2, "admin": 3}
EVERY_COLLECTION = "*"
BOOTSTRAP_KEY_ID = "bootstrap"  # the audit trail's name for the key from FOCALSERVE_ADMIN_KEY


@dataclass(frozen=True)
class Grant:
    pattern: str  # a collection name or a glob over names
    action: Action

    def covers(self, collection: str) -> bool:
        return fnmatchcase(collection, self.pattern)


@dataclass(frozen=True)
class Principal:
    """The key a request acts as. `key_id` None: auth is off and every request may do anything."""

    key_id: str | None
    grants: tuple[Grant, ...] = ()
    limits: KeyLimits = field(default_factory=KeyLimits)
    unrestricted: bool = False  # auth off, or the bootstrap admin key

    @property
    def actor(self) -> str:
        """The name the audit trail records."""
        return self.key_id or "anonymous"

    @property
    def manages_keys(self) -> bool:
        return self.unrestricted or Grant(EVERY_COLLECTION, "admin") in self.grants

    def rank(self, collection: str) -> int:
        if self.unrestricted:
            return RANK["admin"]
        return max((RANK[grant.action] for grant in self.grants if grant.covers(collection)), default=0)

    def may(self, action: Action, collection: str) -> bool:
        return self.rank(collection) >= RANK[action]

    def require(self, action: Action, collection: str) -> None:
        """404 for a collection the key may not see at all (whether or not it exists), 403 for one it
        sees but may not `action` on."""
        rank = self.rank(collection)
        if rank == 0:
            raise collection_not_found(collection)
        if rank < RANK[action]:
            raise Forbidden(f"this key may not {action} collection {collection!r}")

    def require_some_grant(self) -> None:
        """Embedding touches no collection, but is still the deployment's capacity: any grant will do."""
        if not (self.unrestricted or self.grants):
            raise Forbidden("this key has no grant; embedding needs a key with a grant on some collection")

    def require_key_admin(self) -> None:
        if not self.manages_keys:
            raise Forbidden("managing keys and reading the audit trail needs a key with 'admin' on '*'")

    def visible(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if self.rank(name) > 0]


ANONYMOUS = Principal(None, unrestricted=True)

