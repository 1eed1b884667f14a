"""The search page: static files under /ui, plus the one fact the page cannot guess (auth)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from focalserve_server.api.deps import GatewayDep
from focalserve_server.api.responses import FastJSONResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "ui"
router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/auth.json")
async def ui_auth(gateway: GatewayDep) -> FastJSONResponse:
    """Whether the page must ask for an API key; never the keys."""
    return FastJSONResponse({"keys": gateway.access.registry.required})


def install_ui(app: FastAPI) -> None:
    """Routes first: the static mount would otherwise answer for /ui/auth.json too."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
