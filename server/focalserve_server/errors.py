"""Domain errors, each with its HTTP status and a stable code; rendered as
`{"error": {"code", "message", "loc"?, "limit"?, "reason"?}}` by one handler (api/errors.py).

`loc` is the JSON path of the failing input (`("inputs", 2, "image")`), `limit` the number that
was exceeded: a client learns both without reading the message, which is composed once, where
the error is raised, and never rewritten.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

Loc = tuple[str | int, ...]
T = TypeVar("T")


class FocalServeError(Exception):
    status: int = 500
    code: str = "internal_error"
    reason: str | None = None  # a finer rule than the code, where one says more (an image URL's refusal)

    def __init__(self, message: str, *, loc: Sequence[str | int] = (), limit: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc: Loc = tuple(loc)
        self.limit = limit

    def within(self, *prefix: str | int) -> FocalServeError:
        """The same error located inside `prefix`: a validator knows its field, its caller the position."""
        located = type(self).__new__(type(self), *self.args)  # not copy.copy: subclasses' __init__ differ
        located.__dict__.update(self.__dict__, loc=(*prefix, *self.loc))
        return located


class InvalidRequest(FocalServeError):
    status, code = 422, "invalid_request"

    @classmethod
    def from_validation(cls, errors: Sequence[Any], within: Loc = ()) -> InvalidRequest:
        """pydantic's first error, located; its loc is pydantic's without the `within` prefix
        (FastAPI prefixes a JSON body's errors with "body")."""
        first = dict(errors[0]) if errors else {}
        loc = tuple(first.get("loc", ()))
        if loc[: len(within)] == within:
            loc = loc[len(within):]
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return cls(message, loc=loc)


class InvalidImage(FocalServeError):
    status, code = 422, "invalid_image"


class ImageTooLarge(FocalServeError):
    status, code = 413, "image_too_large"


class InvalidInstruction(FocalServeError):
    status, code = 422, "invalid_instruction"


class TooManyInputs(FocalServeError):
    status, code = 413, "too_many_inputs"


class UnknownModel(FocalServeError):
    status, code = 404, "unknown_model"


class Unauthorized(FocalServeError):
    status, code = 401, "unauthorized"


class Forbidden(FocalServeError):
    """The key may see the collection but not do this to it (or may not manage keys)."""

    status, code = 403, "forbidden"


class RateLimited(FocalServeError):
    """The key is over one of its limits; `retry_after_s` says when the window frees up, `headers` what
    the IETF `RateLimit` fields say."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers


class PayloadTooLarge(FocalServeError):
    status, code = 413, "payload_too_large"


class NotFound(FocalServeError):
    status, code = 404, "not_found"


def collection_not_found(name: str) -> NotFound:
    """One wording for a missing collection and one the key may not see: they must not differ."""
    return NotFound(f"collection {name!r} does not exist")


class ImageNotKept(NotFound):
    """The item is stored with its vectors and its source, not its bytes (`focalserve ingest --no-keep-images`)."""

    code = "image_not_kept"


class Conflict(FocalServeError):
    status, code = 409, "conflict"


class Overloaded(FocalServeError):
    """A queue is full: the client should retry after a pause rather than wait unboundedly."""

    status, code = 503, "overloaded"


class DeadlineExceeded(FocalServeError):
    """The request ran past `request_timeout_s`: the server is too busy to answer in time."""

    status, code = 503, "deadline_exceeded"


class DatabaseUnavailable(FocalServeError):
    """The database holding the collections cannot be reached, is restarting, or refuses writes
    (a standby during fail-over): nothing was written, so the request may simply be retried."""

    status, code = 503, "database_unavailable"


class WriteOutcomeUnknown(FocalServeError):
    """The connection was lost while the database committed: the write may or may not have landed.
    Retrying is safe where the write is idempotent (adds are, by item id)."""

    status, code = 503, "write_outcome_unknown"


class InsufficientStorage(FocalServeError):
    """The disk (or the database's disk) is full, over quota or read-only: the write was rolled back.
    Reads keep working; writes work again as soon as space returns."""

    status, code = 507, "insufficient_storage"

    STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

    @classmethod
    def from_os_error(cls, error: OSError) -> InsufficientStorage | None:
        """The error for an exhausted or read-only file system; None for other OS errors."""
        if error.errno not in cls.STORAGE_ERRNOS:
            return None
        return cls(f"the server cannot write to its disk ({error.strerror or errno.errorcode[error.errno]}); "
                   "nothing was stored")


class ReplicaBehind(FocalServeError):
    """This replica has not yet applied the change-log position a request needs: retry shortly."""

    status, code = 503, "replica_behind"


class BackendUnavailable(FocalServeError):
    """The model backend (e.g. Triton) cannot be reached or is not ready."""

    status, code = 503, "backend_unavailable"


class MediaURLRefused(FocalServeError):
    """An image URL the gateway will not fetch; `reason` names the rule (also a metric label): scheme,
    malformed, domain_not_allowed, address_not_global, unresolvable, redirect_refused, too_many_redirects.

    422 rather than 403: the request is refused for what it holds, whoever sends it.
    """

    status, code = 422, "media_url_refused"

    def __init__(self, reason: str, message: str, *, limit: int | None = None) -> None:
        super().__init__(message, limit=limit)
        self.reason = reason


class MediaFetchFailed(FocalServeError):
    """An allowed image URL could not be fetched; `reason`: timeout, upstream_status or connect.
    A 4xx: the client chose the URL, and the gateway is not at fault."""

    status, code = 422, "media_fetch_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_at(loc: Loc, check: Callable[..., T], *args: Any) -> T:
    """Run a validator; its client error is located inside `loc`."""
    try:
        return check(*args)
    except FocalServeError as error:
        if error.status >= 500:
            raise
        raise error.within(*loc) from None


async def await_at(loc: Loc, work: Awaitable[T]) -> T:
    """Await `work`; a client error it raises is located inside `loc` (server errors are not)."""
    try:
        return await work
    except FocalServeError as error:
        if error.status >= 500:
            raise
        raise error.within(*loc) from None
