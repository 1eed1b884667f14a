"""Every error leaves the gateway as {"error": {"code", "message", "loc"?, "limit"?}} with its status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from focalserve_server.api.responses import FastJSONResponse, error_response
from focalserve_server.errors import FocalServeError, InsufficientStorage, InvalidRequest, RateLimited

logger = logging.getLogger(__name__)


def render_error(error: FocalServeError, retry_after_s: int) -> FastJSONResponse:
    """A domain error as its response: 503s and 429s say when to retry, 401s which scheme to use."""
    headers = {"Retry-After": str(retry_after_s)} if error.status == 503 else None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after_s), **error.headers}
    return error_response(error.status, error.code, error.message, headers, error.loc, error.limit, error.reason)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(FocalServeError)
    async def domain_error(request: Request, error: FocalServeError) -> FastJSONResponse:
        return render_error(error, retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> FastJSONResponse:
        invalid = InvalidRequest.from_validation(error.errors(), within=("body",))
        return error_response(invalid.status, invalid.code, invalid.message, loc=invalid.loc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> FastJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(OSError)
    async def os_error(request: Request, error: OSError) -> FastJSONResponse:
        """A full or read-only disk met outside the store, e.g. spooling a large multipart upload."""
        full = InsufficientStorage.from_os_error(error)
        if full is None:
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return internal_error()
        return render_error(full, retry_after_s)


def internal_error() -> FastJSONResponse:
    return error_response(500, "internal_error", "internal server error")
