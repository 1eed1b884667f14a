"""Per-key limits that hold across every gateway sharing the store.

A per-process limiter would let N processes take N times the limit. Here each quota (requests and
images per window, a burst of requests per second) is counted in the store, per key and period;
a process leases a share of it at a time (an eighth of the limit, less as the period fills) and
spends that locally, so the store sees one write per share, not per request, and the total over all
gateways never exceeds the limit (a key used through many gateways at once may be refused a little
early, while others still hold unspent shares). Concurrency is held the same way: a process
claims request slots in the store, keeps them while its requests come, and gives them back once
they stop; a crashed process's slots lapse after `SLOT_TTL_S`.

Over a limit: 429 with Retry-After and the IETF httpapi `RateLimit` / `RateLimit-Policy` fields.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field

from focalserve_client.schemas import KeyLimits
from focalserve_server.access.grants import Principal
from focalserve_server.access.records import AccessRecords
from focalserve_server.errors import RateLimited
from focalserve_server.metrics import Metrics

SHARE = 8  # a lease takes at most 1/SHARE of a quota
SLOT_HOLD_S = 1.0  # slots idle this long go back to the store
SLOT_TTL_S = 10.0  # a holder that stops renewing (crashed) loses its slots after this


@dataclass(frozen=True)
class Quota:
    name: str
    limit: int
    window_s: int


def quotas(limits: KeyLimits) -> list[Quota]:
    """A key's window quotas, tightest window first."""
    named = [("burst", limits.burst, 1), ("requests", limits.requests, limits.window_s),
             ("images", limits.images, limits.window_s)]
    return [Quota(name, limit, window_s) for name, limit, window_s in named if limit is not None]


@dataclass
class _Share:
    """This process's unspent share of one key's quota in one period, and the total used as last seen."""

    period: int
    window_s: int
    tokens: int = 0
    used: int = 0


@dataclass
class _Slots:
    held: int = 0
    busy: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    stored: bool = False  # whether the store has this holder's row for the key


@dataclass
class Admission:
    """An admitted request: the fields to answer with, and its concurrency slot to give back."""

    headers: dict[str, str]
    slots: _Slots | None = None  # the key's slots here, one of them this request's

    def done(self) -> None:
        if self.slots is not None:
            self.slots.busy -= 1
            self.slots.idle_since = time.monotonic()
            self.slots = None


class SharedLimiter:
    def __init__(self, store: AccessRecords, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._holder = uuid.uuid4().hex  # this process, as a holder of request slots
        self._shares: dict[tuple[str, str], _Share] = {}
        self._slots: dict[str, _Slots] = {}
        self._lock = asyncio.Lock()  # one lease or claim at a time: each reads the state it updates

    async def admit(self, principal: Principal) -> Admission:
        """Count one request against the key's burst, request quota and concurrency; 429 if over."""
        key_id, limits = principal.key_id, principal.limits
        if key_id is None or principal.unrestricted:
            return Admission({})
        for quota in quotas(limits):
            if quota.name != "images":
                await self._take(key_id, quota, 1, limits)
        slots = await self._claim(key_id, limits) if limits.concurrency is not None else None
        return Admission(ratelimit_fields(limits, self._remaining(key_id, limits)), slots)

    async def charge_images(self, principal: Principal, count: int) -> None:
        """Count a request's images against the key's image quota; 429 if they do not fit."""
        limits = principal.limits
        if principal.key_id is None or principal.unrestricted or limits.images is None or count == 0:
            return
        await self._take(principal.key_id, Quota("images", limits.images, limits.window_s), count, limits)

    async def _take(self, key_id: str, quota: Quota, count: int, limits: KeyLimits) -> None:
        now = time.time()
        period = int(now // quota.window_s)
        share = self._shares.get((key_id, quota.name))
        if share is None or share.period != period:
            share = self._shares[key_id, quota.name] = _Share(period, quota.window_s)
        if share.tokens < count:
            async with self._lock:
                if share.tokens < count:
                    want = max(count - share.tokens, quota.limit // SHARE, (quota.limit - share.used) // (2 * SHARE))
                    taken, share.used = await asyncio.to_thread(
                        self._store.lease_quota, key_id, quota.name, period, min(want, quota.limit), quota.limit)
                    share.tokens += taken
                    self._metrics.quota_leases.labels(quota.name).inc()
        if share.tokens < count:
            self._metrics.rate_limited.labels(quota.name).inc()
            retry_after = max(1, math.ceil((period + 1) * quota.window_s - now))
            raise RateLimited(
                f"this key is over its {quota.name} limit ({quota.limit} per {quota.window_s} s)"
                + (f"; this request needs {count}" if count > 1 else ""),
                retry_after_s=retry_after,
                headers=ratelimit_fields(limits, {**self._remaining(key_id, limits), quota.name: 0}),
            )
        share.tokens -= count

    def _remaining(self, key_id: str, limits: KeyLimits) -> dict[str, int]:
        """What remains of each quota as this process last saw it: its own unspent share, and what no
        gateway had taken at its last lease."""
        remaining = {}
        for quota in quotas(limits):
            share = self._shares.get((key_id, quota.name))
            remaining[quota.name] = quota.limit if share is None else share.tokens + quota.limit - share.used
        return remaining

    async def _claim(self, key_id: str, limits: KeyLimits) -> _Slots:
        assert limits.concurrency is not None
        slots = self._slots.setdefault(key_id, _Slots())
        if slots.busy >= slots.held:
            async with self._lock:
                if slots.busy >= slots.held:
                    claimed = await asyncio.to_thread(self._store.claim_slot, key_id, self._holder, slots.held,
                                                      limits.concurrency, time.time() + SLOT_TTL_S)
                    if not claimed:
                        self._metrics.rate_limited.labels("concurrency").inc()
                        raise RateLimited(
                            f"this key has {limits.concurrency} requests in flight, its concurrency limit",
                            retry_after_s=1, headers={},
                        )
                    slots.held += 1
                    slots.stored = True
        slots.busy += 1
        return slots

    async def maintain(self) -> None:
        """Renew the slots in use, give back the idle ones; drop shares of periods that have ended.
        Under the lock: a claim meanwhile would be overwritten by the count read before it."""
        async with self._lock:
            now, idle_before = time.time(), time.monotonic() - SLOT_HOLD_S
            for slots in self._slots.values():
                if slots.busy < slots.held and slots.idle_since < idle_before:
                    slots.held = slots.busy
            held = {key_id: slots.held for key_id, slots in self._slots.items() if slots.held or slots.stored}
            if held:
                await asyncio.to_thread(self._store.hold_slots, self._holder, held, now + SLOT_TTL_S)
            for slots in self._slots.values():
                slots.stored = slots.held > 0
            self._shares = {name: share for name, share in self._shares.items()
                            if share.period >= int(now // share.window_s)}


def ratelimit_fields(limits: KeyLimits, remaining_of: dict[str, int]) -> dict[str, str]:
    """`RateLimit-Policy` (each quota and window) and `RateLimit` (what remains, and when it resets)."""
    now = time.time()
    policies, states = [], []
    for quota in quotas(limits):
        remaining = max(0, remaining_of[quota.name])
        reset = max(1, math.ceil((int(now // quota.window_s) + 1) * quota.window_s - now))
        policies.append(f'"{quota.name}";q={quota.limit};w={quota.window_s}')
        states.append(f'"{quota.name}";r={remaining};t={reset}')
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)} if policies else {}
