"""The last line of the error path: an unexpected error is a JSON 500 that ends the request, not
the connection; a full or read-only disk met anywhere is a 507."""

from __future__ import annotations

import errno

import httpx
from fastapi import FastAPI

from focalserve_server.api.errors import install_error_handlers
from focalserve_server.api.middleware import ContainErrors


def app_raising(error: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, retry_after_s=1)

    @app.get("/fail")
    async def fail() -> dict:
        raise error

    app.add_middleware(ContainErrors)
    return app


async def answer(error: Exception) -> httpx.Response:
    # raise_app_exceptions stays on: an error that escaped the app would fail this call
    transport = httpx.ASGITransport(app=app_raising(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/fail")


async def test_an_unexpected_error_is_a_json_500_that_does_not_escape():
    response = await answer(RuntimeError("boom"))
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "boom" not in response.text


async def test_a_disk_that_refuses_writes_is_a_507_wherever_it_is_met():
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        response = await answer(OSError(number, "refused"))
        assert response.status_code == 507 and response.json()["error"]["code"] == "insufficient_storage"
    other = await answer(OSError(errno.EIO, "I/O error"))
    assert other.status_code == 500 and other.json()["error"]["code"] == "internal_error"
