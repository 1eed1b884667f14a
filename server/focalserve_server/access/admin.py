"""Making, rotating, revoking keys and setting their grants: one implementation for the admin API and
the `focalserve keys` command."""

from __future__ import annotations

from typing import Any

from focalserve_client.schemas import Grant as GrantSpec
from focalserve_client.schemas import KeyCreate
from focalserve_server.access import secrets
from focalserve_server.access.grants import Grant
from focalserve_server.access.records import AccessRecords, AuditRecord, StoredKey
from focalserve_server.errors import NotFound


def create_key(store: AccessRecords, request: KeyCreate, actor: str) -> dict[str, Any]:
    """The new key's description, with the whole key in `key`: the only time it is shown."""
    issued = secrets.issue()
    store.create_key(issued.id, request.name, issued.prefix, issued.hash, _grants(request.grants), request.limits,
                     actor)
    return {**describe(find_key(store, issued.id)), "key": issued.token}


def rotate_key(store: AccessRecords, key_id: str, actor: str) -> dict[str, Any]:
    """A new secret for the key (same id and grants); the old secret is refused from the next poll."""
    issued = secrets.issue(key_id)
    if not store.rotate_key(key_id, issued.prefix, issued.hash, actor):
        raise _no_key(key_id)
    return {**describe(find_key(store, key_id)), "key": issued.token}


def revoke_key(store: AccessRecords, key_id: str, actor: str) -> None:
    if not store.revoke_key(key_id, actor):
        raise _no_key(key_id)


def set_grants(store: AccessRecords, key_id: str, grants: list[GrantSpec], actor: str) -> dict[str, Any]:
    if not store.set_grants(key_id, _grants(grants), actor):
        raise _no_key(key_id)
    return describe(find_key(store, key_id))


def find_key(store: AccessRecords, key_id: str) -> StoredKey:
    for key in store.keys():
        if key.id == key_id:
            return key
    raise _no_key(key_id)


def describe(key: StoredKey) -> dict[str, Any]:
    """A key as the API and the command show it: never its hash."""
    return {
        "id": key.id, "name": key.name, "prefix": key.prefix,
        "grants": [{"collections": grant.pattern, "action": grant.action} for grant in key.grants],
        "limits": key.limits.model_dump(), "created": key.created, "last_used": key.last_used,
        "revoked": key.revoked,
    }


def audit_entry(record: AuditRecord) -> dict[str, Any]:
    return {"seq": record.seq, "time": record.time, "key": record.key_id, "action": record.action,
            "target": record.target, "detail": record.detail}


def _grants(specs: list[GrantSpec]) -> list[Grant]:
    return [Grant(spec.collections, spec.action) for spec in specs]


def _no_key(key_id: str) -> NotFound:
    return NotFound(f"no live key {key_id!r} (unknown or revoked)")
