"""What the client raises: one hierarchy, each error carrying the server's status, code, message,
and where known the failing input's `loc` and the `limit` it exceeded.

    FocalServeError
    ├── ServerUnreachableError  the server could not be reached (after retries)
    ├── RequestTimeoutError     no answer within the timeout; a wait's deadline passed
    ├── OverloadedError         503 `overloaded`: a queue was full (after retries)
    ├── RateLimitedError        429 `rate_limited`: the key is over one of its limits (after retries)
    ├── NotFoundError           404: unknown model, collection, item or condition
    ├── InvalidRequestError     any other 4xx: bad image, instruction, limits, conflict
    └── ServerError             any other 5xx, e.g. 503 `backend_unavailable` (after retries)
        ├── InsufficientStorageError  507: the server's disk is full or read-only; nothing stored
        └── ConditionFailedError      a condition's index build failed

Transport failures are raised `from` the httpx exception, so the cause stays visible. The names
do not shadow Python's builtins; `ConnectionError` and `TimeoutError`, their old names, still
resolve here (with a DeprecationWarning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from focalserve_client.schemas import ErrorResponse

Loc = tuple[str | int, ...]
"""A JSON path into the request, e.g. ("inputs", 2, "image") or ("query", "k")."""

_Error = TypeVar("_Error", bound="FocalServeError")


class FocalServeError(Exception):
    """Base of every client error.

    `status` and `code` are None when no response arrived. `loc` is the JSON path of the input
    the server refused (None when the error is not about one input); `limit` is the number the
    request exceeded (inputs per request, body bytes, instruction characters), when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        loc: Sequence[str | int] | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.loc: Loc | None = tuple(loc) if loc is not None else None
        self.limit = limit

    def with_loc(self: _Error, loc: Sequence[str | int] | None) -> _Error:
        """The same error about another input (a new object; this one is left as it is)."""
        return type(self)(
            self.message, status=self.status, code=self.code, loc=loc, limit=self.limit
        )

    def __str__(self) -> str:
        where = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        if self.loc:
            where = f"{where} at {format_loc(self.loc)}".strip()
        return f"{self.message} ({where})" if where else self.message


class ServerUnreachableError(FocalServeError):
    """The server could not be reached, or dropped the connection, on every attempt."""


class RequestTimeoutError(FocalServeError):
    """The server did not answer within the client's timeout (or a wait's deadline passed)."""


class OverloadedError(FocalServeError):
    """503 `overloaded`: the gateway's queue stayed full through every retry."""


class RateLimitedError(FocalServeError):
    """429 `rate_limited`: the key stayed over one of its limits (requests, images, burst, concurrency)
    through every retry; the server's Retry-After says when its window frees up."""


class NotFoundError(FocalServeError):
    """404: unknown model, collection, item, or unregistered condition."""


class InvalidRequestError(FocalServeError):
    """Any other 4xx: the request itself is wrong; retrying it cannot help."""


class ServerError(FocalServeError):
    """Any other 5xx, including 503 `backend_unavailable` once the retries are spent."""


class InsufficientStorageError(ServerError):
    """507 `insufficient_storage`: the server's disk (or its database's) is full or read-only.

    Nothing of the write was stored; reads still work, and the same write succeeds once space returns.
    Not retried: freeing space takes an operator, not a pause.
    """


class ConditionFailedError(ServerError):
    """A condition's background index build ended with status `failed`."""


def format_loc(loc: Sequence[str | int]) -> str:
    """("inputs", 2, "image") as inputs[2].image."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def error_from_response(status: int, body: Any, fallback_text: str = "") -> FocalServeError:
    """The error for an HTTP error answer and its `{"error": {"code", "message", ...}}` body."""
    try:
        detail = ErrorResponse.model_validate(body).error
    except ValidationError:
        detail = None
    if detail is not None:
        code, message = detail.code or None, detail.message
        loc, limit = detail.loc, detail.limit
    else:
        code, message, loc, limit = None, fallback_text.strip()[:500], None, None
    return _kind(status, code)(
        message or f"HTTP {status}", status=status, code=code, loc=loc, limit=limit
    )


def _kind(status: int, code: str | None) -> type[FocalServeError]:
    if status == 503 and code == "overloaded":
        return OverloadedError
    if status == 429:
        return RateLimitedError
    if status == 404:
        return NotFoundError
    if status == 507:
        return InsufficientStorageError
    if 400 <= status < 500:
        return InvalidRequestError
    return ServerError


_RENAMED = {"ConnectionError": ServerUnreachableError, "TimeoutError": RequestTimeoutError}


def deprecated_name(module: str, name: str) -> type[FocalServeError]:
    """An error class under its old, builtin-shadowing name, with a DeprecationWarning."""
    if name not in _RENAMED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = _RENAMED[name]
    warnings.warn(
        f"{module}.{name} is now {new.__name__} (the old name shadowed the builtin)",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def __getattr__(name: str) -> type[FocalServeError]:
    return deprecated_name(__name__, name)
