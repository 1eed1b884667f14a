"""Every error leaves the gateway as {"error": {"code", "message"}} with its status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from focalserve_server.api.responses import error_response
from focalserve_server.errors import FocalServeError

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(FocalServeError)
    async def domain_error(request: Request, error: FocalServeError):
        headers = {"Retry-After": str(retry_after_s)} if error.status == 503 else None
        if error.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(error.status, error.code, error.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return error_response(422, "invalid_request", describe_validation_errors(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """pydantic's error list as one readable line: 'inputs.0: each input needs ...'."""
    parts = []
    for item in list(errors)[:5]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"
