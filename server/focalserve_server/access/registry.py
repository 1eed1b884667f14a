"""The keys a gateway process knows, reloaded whenever another changes them, and the check of a
presented key against them.

Keys live in the shared store; each process keeps them in memory and polls `access_version` (one
small read) at the change log's interval, so a key revoked through one gateway is refused by every
other one within that interval. A key's slow hash is checked once per process and secret: after
that a SHA-256 of the presented key finds it, and a rotation (a new hash) forgets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict

from focalserve_server.access import secrets
from focalserve_server.access.grants import ANONYMOUS, BOOTSTRAP_KEY_ID, Principal
from focalserve_server.access.records import AccessRecords, StoredKey
from focalserve_server.errors import Unauthorized

VERIFIED_KEYS = 10_000  # presented keys remembered as checked, per process
HASHING_AT_ONCE = 2  # slow hashes running at once: a flood of wrong secrets takes two threads, not the machine

NO_KEY = "this endpoint needs an API key: send 'Authorization: Bearer <key>'"
BAD_KEY = "the API key is not valid (unknown, revoked or rotated)"


class KeyRegistry:
    def __init__(self, store: AccessRecords, admin_key: str) -> None:
        self._store = store
        self._admin_key = admin_key.encode()
        self._keys: dict[str, tuple[StoredKey, Principal]] = {}
        self._version = -1
        self._verified: OrderedDict[bytes, str] = OrderedDict()  # sha256(key) -> the hash it matched
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self.last_used: dict[str, float] = {}  # since the last `take_use`

    @property
    def required(self) -> bool:
        """Keys are needed once there is a bootstrap key, or once any key was ever made (never again
        off after that: revoking the last key must not open the gateway)."""
        return bool(self._admin_key) or self._version > 0

    async def refresh(self) -> None:
        version = await asyncio.to_thread(self._store.access_version)
        if version != self._version:
            keys = await asyncio.to_thread(self._store.keys)
            self._keys = {key.id: (key, Principal(key.id, key.grants, key.limits)) for key in keys
                          if key.revoked is None}
            self._version = version

    async def authenticate(self, authorization: str) -> Principal:
        """The principal a request's `Authorization` header names; 401 for a missing or bad key."""
        if not self.required:
            return ANONYMOUS
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized(NO_KEY)
        token = presented.strip()
        if self._admin_key and hmac.compare_digest(token.encode(), self._admin_key):
            return Principal(BOOTSTRAP_KEY_ID, unrestricted=True)
        parsed = secrets.parse(token)
        known = self._keys.get(parsed[0]) if parsed else None
        if parsed is None or known is None:
            raise Unauthorized(BAD_KEY)
        key, principal = known
        digest = hashlib.sha256(token.encode()).digest()
        if self._verified.get(digest) != key.hash:
            async with self._hashing:
                if not await asyncio.to_thread(secrets.verify, parsed[1], key.hash):
                    raise Unauthorized(BAD_KEY)
            self._verified[digest] = key.hash
            if len(self._verified) > VERIFIED_KEYS:
                self._verified.popitem(last=False)
        self.last_used[key.id] = time.time()
        return principal

    def take_use(self) -> dict[str, float]:
        """When each key was last used here since the previous call (written to the store in batches)."""
        used, self.last_used = self.last_used, {}
        return used
