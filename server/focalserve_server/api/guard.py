"""The access layer every request passes: the key it presents, the limits it counts against.

Pure ASGI, in front of the routes, so that a refused request costs no parsing; a route reads the
principal it acts as with `principal_of` and checks its grants on the collection it touches.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from focalserve_server.access.control import AccessControl
from focalserve_server.access.grants import Principal
from focalserve_server.api.errors import render_error
from focalserve_server.errors import FocalServeError

# No collection data behind these: probes, metrics (scraped by Prometheus without a key), the API schema.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class AccessGuard:
    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path == "/ui" or path.startswith("/ui/"):
            await self.app(scope, receive, send)
            return
        access: AccessControl = scope["app"].state.gateway.access
        try:
            principal = await access.registry.authenticate(_header(scope, b"authorization"))
            admission = await access.limiter.admit(principal)
        except FocalServeError as error:
            await render_error(error, self.retry_after_s)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        fields = [(name.lower().encode(), value.encode()) for name, value in admission.headers.items()]

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start" and fields:
                message["headers"] = [*message.get("headers", []), *fields]
            await send(message)

        try:
            await self.app(scope, receive, send_with_fields)
        finally:
            admission.done()


def principal_of(request: Request) -> Principal:
    principal: Principal = request.scope["state"]["principal"]
    return principal


async def charge_images(request: Request, count: int) -> None:
    """Count a request's images against its key's image quota (429 if over)."""
    access: AccessControl = request.app.state.gateway.access
    await access.limiter.charge_images(principal_of(request), count)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
