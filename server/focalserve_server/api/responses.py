"""Fast JSON responses (orjson, numpy arrays serialised natively) and the error body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    loc: Sequence[str | int] = (),
    limit: int | None = None,
    reason: str | None = None,
) -> FastJSONResponse:
    """The one error body: `loc`, `limit` and `reason` appear only when they say something."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if loc:
        detail["loc"] = list(loc)
    if limit is not None:
        detail["limit"] = limit
    if reason is not None:
        detail["reason"] = reason
    return FastJSONResponse({"error": detail}, status_code=status, headers=headers)
