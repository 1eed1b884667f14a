"""What the client raises: one hierarchy, each error carrying the server's status, code and message.

    FocalServeError
    ├── ConnectionError       the server could not be reached (after retries)
    ├── TimeoutError          no answer within the timeout
    ├── OverloadedError       503 `overloaded`: a queue was full (after retries)
    ├── NotFoundError         404: unknown model, collection, item or condition
    ├── InvalidRequestError   any other 4xx: bad image, instruction, limits, conflict
    └── ServerError           any other 5xx, e.g. 503 `backend_unavailable` (after retries)
        └── ConditionFailedError   a condition's index build failed

Transport failures are raised `from` the httpx exception, so the cause stays visible.
`ConnectionError` and `TimeoutError` shadow the builtins of the same name on purpose: import
them as `focalserve_client.errors.ConnectionError` or catch `FocalServeError`.
"""

from __future__ import annotations

from typing import Any


class FocalServeError(Exception):
    """Base of every client error; `status` and `code` are None when no response arrived."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        return f"{self.message} ({where})" if where else self.message


class ConnectionError(FocalServeError):  # noqa: A001 - the hierarchy's name, see the module docstring
    """The server could not be reached, or dropped the connection, on every attempt."""


class TimeoutError(FocalServeError):  # noqa: A001
    """The server did not answer within the client's timeout (or a wait's deadline passed)."""


class OverloadedError(FocalServeError):
    """503 `overloaded`: the gateway's queue stayed full through every retry."""


class NotFoundError(FocalServeError):
    """404: unknown model, collection, item, or unregistered condition."""


class InvalidRequestError(FocalServeError):
    """Any other 4xx: the request itself is wrong; retrying it cannot help."""


class ServerError(FocalServeError):
    """Any other 5xx, including 503 `backend_unavailable` once the retries are spent."""


class ConditionFailedError(ServerError):
    """A condition's background index build ended with status `failed`."""


def error_from_response(status: int, body: Any, fallback_text: str = "") -> FocalServeError:
    """The error for an HTTP error answer and its `{"error": {"code", "message"}}` body."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code, message = str(detail.get("code", "")) or None, str(detail.get("message", ""))
    else:
        code, message = None, fallback_text.strip()[:500]
    message = message or f"HTTP {status}"
    if status == 503 and code == "overloaded":
        kind: type[FocalServeError] = OverloadedError
    elif status == 404:
        kind = NotFoundError
    elif 400 <= status < 500:
        kind = InvalidRequestError
    else:
        kind = ServerError
    return kind(message, status=status, code=code)
