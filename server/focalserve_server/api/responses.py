"""Fast JSON responses (orjson, numpy arrays serialised natively) and the error body."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> FastJSONResponse:
    return FastJSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
