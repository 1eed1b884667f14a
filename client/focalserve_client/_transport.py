"""One HTTP call with retries: exponential backoff, full jitter, Retry-After honoured (capped).

Retried: failures to connect, 503 answers (`overloaded`, `backend_unavailable`,
`database_unavailable`, ...) and 429 `rate_limited` (refused before any work, so every call may be
sent again). A dropped connection after the request was sent, and a 503
`write_outcome_unknown` (the database lost the connection while committing), are retried only for
idempotent calls (every call of this API is, except creating a collection). Never retried: any
4xx, other 5xx, read timeouts (the server may still be working; sending the request again would
only add load).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from focalserve_client.errors import (
    FocalServeError,
    RequestTimeoutError,
    ServerUnreachableError,
    error_from_response,
)

# the request never reached the server: always safe to send again
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# the connection broke after the request may have arrived: safe for idempotent calls only
_BROKEN = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Call:
    """One API request: what to send, and how to treat its failures."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    idempotent: bool = True
    answers: tuple[int, ...] = ()  # error statuses that are answers here (GET /readyz's 503)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("max_retries, backoff_base and backoff_max must not be negative")

    def retries_transport_error(self, error: httpx.TransportError, call: Call) -> bool:
        return isinstance(error, _NOT_SENT) or (call.idempotent and isinstance(error, _BROKEN))

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1`."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.backoff_max)
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _transport_failure(error: httpx.TransportError, call: Call, attempts: int) -> FocalServeError:
    where = f"{call.method} {call.path}"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(error, httpx.TimeoutException):
        return RequestTimeoutError(f"{where}: timed out{tries} ({type(error).__name__})")
    return ServerUnreachableError(
        f"{where}: {type(error).__name__}: {error or 'connection failed'}{tries}"
    )


def _http_failure(response: httpx.Response) -> tuple[FocalServeError, httpx.HTTPStatusError]:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = error_from_response(response.status_code, body, response.text)
    cause = httpx.HTTPStatusError(
        f"HTTP {response.status_code}", request=response.request, response=response
    )
    return error, cause


def _should_retry_answer(response: httpx.Response, call: Call) -> bool:
    if response.status_code == 429:
        return True
    if response.status_code != 503 or 503 in call.answers:
        return False
    return call.idempotent or _error_code(response) != "write_outcome_unknown"


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def send(http: httpx.AsyncClient, policy: RetryPolicy, call: Call) -> httpx.Response:
    """Send `call`, retrying per `policy`; the response, or the mapped error."""
    attempt = 0
    while True:
        try:
            response = await http.request(
                call.method, call.path, json=call.json, params=call.params
            )
        except httpx.TransportError as error:
            if attempt < policy.max_retries and policy.retries_transport_error(error, call):
                await asyncio.sleep(policy.delay(attempt))
                attempt += 1
                continue
            raise _transport_failure(error, call, attempt + 1) from error
        if _should_retry_answer(response, call) and attempt < policy.max_retries:
            await asyncio.sleep(policy.delay(attempt, response.headers.get("retry-after")))
            attempt += 1
            continue
        return _checked(response, call)


def _checked(response: httpx.Response, call: Call) -> httpx.Response:
    if response.is_error and response.status_code not in call.answers:
        error, cause = _http_failure(response)
        raise error from cause
    return response
