"""Image URLs fetched from a real HTTP server on 127.0.0.1, with names resolved by a table.

Every test runs under `loopback_only`: a connection attempted to any address outside loopback fails
the test, and no name ever reaches a real DNS server. Addresses such as 169.254.169.254 appear only
in the table, to be refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any

import pytest
from PIL import Image

from focalserve_server.config import Settings
from focalserve_server.errors import ImageTooLarge, MediaFetchFailed, MediaURLRefused
from focalserve_server.media.addresses import system_resolver
from focalserve_server.media.fetch import USER_AGENT, MediaFetcher
from focalserve_server.metrics import Metrics
from tests.helpers.inprocess import InProcessGateway, gateway_settings

MAX_BYTES = 64 * 1024
HUGE = 64 * 1024 * 1024  # far beyond what loopback socket buffers hold, so a stopped read is visible
NAMES = {
    "images.test": ["127.0.0.1"],
    "metadata.images.test": ["169.254.169.254"],
    "private.images.test": ["10.0.0.1"],
    "cgnat.images.test": ["100.64.0.1"],
    "mapped.images.test": ["::ffff:10.0.0.1"],
    "mixed.images.test": ["8.8.8.8", "10.0.0.1"],
    "loopback.images.test": ["127.0.0.2"],
}
SETTINGS = {
    "allowed_media_domains": ["images.test", "*.images.test"],
    "media_private_networks": ["127.0.0.1/32"],
    "max_image_bytes": MAX_BYTES,
    "media_fetch_timeout_s": 5.0,
}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png()


class ImageServer(ThreadingHTTPServer):
    """Records each request's path and headers, and how much of a streamed body it got to send."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.port = self.server_address[1]
        self.seen: list[tuple[str, str | None]] = []  # (path, Host)
        self.headers: dict[str, dict[str, str]] = {}
        self.sent: dict[str, int] = {}
        self.streamed = threading.Event()
        self.closing = threading.Event()

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


class ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers["Host"]))
        self.server.headers[self.path] = dict(self.headers.items())
        route, _, _ = self.path.partition("?")
        try:
            self._answer(route)
        except OSError:  # the fetcher hung up, as it should when it stops reading
            self.close_connection = True
        finally:
            if route in ("/huge-chunked", "/slow"):
                self.server.streamed.set()

    def _answer(self, route: str) -> None:
        port = self.server.port
        if route == "/image.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif route == "/to-ip":
            self._send(302, b"", {"Location": f"http://127.0.0.1:{port}/image.png?via=to-ip"})
        elif route == "/to-metadata":
            self._send(302, b"", {"Location": f"http://metadata.images.test:{port}/latest/meta-data/"})
        elif route == "/no-location":
            self._send(302, b"")
        elif route.startswith("/chain/"):
            left = int(route.removeprefix("/chain/"))
            if left == 0:
                self._send(200, PNG)
            else:
                # relative: resolved against the current URL; the cookie must not come back
                self._send(302, b"", {"Location": f"{left - 1}", "Set-Cookie": "session=secret; Path=/"})
        elif route == "/huge-chunked":
            self._stream_chunked()
        elif route == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            self.wfile.write(PNG[:16])
            self.server.closing.wait(3)  # a fetcher that waited for the rest would wait here
        elif route == "/slow":
            self._trickle()
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = bytes(64 * 1024)
        self.server.sent["/huge-chunked"] = 0
        for _ in range(HUGE // len(chunk)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.server.sent["/huge-chunked"] += len(chunk)
        self.wfile.write(b"0\r\n\r\n")

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.server.sent["/slow"] = 0
        for _ in range(1000):
            self.wfile.write(b"x")
            self.server.sent["/slow"] += 1
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    image_server = ImageServer()
    thread = threading.Thread(target=image_server.serve_forever, daemon=True)
    thread.start()
    yield image_server
    image_server.closing.set()
    image_server.shutdown()
    image_server.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail the test if a connection outside loopback is even attempted, and keep names from DNS:
    getaddrinfo answers numeric hosts only (asyncio's resolver and httpx's connections use it)."""
    attempts: list[object] = []

    def guarded(connect: Callable[..., Any]) -> Callable[..., Any]:
        def connect_on_loopback(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
                attempts.append(address)
                raise OSError(errno.ENETUNREACH, f"the test forbids connecting to {address[0]}")
            return connect(sock, address)
        return connect_on_loopback

    getaddrinfo = socket.getaddrinfo

    def numeric_only(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:  # noqa: A002
        return getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket.socket, "connect", guarded(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    yield attempts
    assert attempts == [], f"connections were attempted outside loopback: {attempts}"


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:  # a name: connecting would have resolved it
        return False


class TableResolver:
    """`NAMES` as a resolver, remembering the names it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[Any]:
        self.asked.append(host)
        if host not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(address) for address in NAMES[host]]


@pytest.fixture
def resolver() -> TableResolver:
    return TableResolver()


@pytest.fixture
async def make_fetcher(resolver: TableResolver) -> AsyncIterator[Callable[..., MediaFetcher]]:
    """MediaFetchers over `SETTINGS` with some changed, the table resolver unless another is given."""
    made: list[MediaFetcher] = []

    def make(metrics: Metrics | None = None, resolve: Any = resolver, **changes: Any) -> MediaFetcher:
        made.append(MediaFetcher(Settings(**{**SETTINGS, **changes}), metrics, resolve))
        return made[-1]

    yield make
    for fetcher in made:
        await fetcher.aclose()


async def refused(fetcher: MediaFetcher, url: str) -> MediaURLRefused:
    with pytest.raises(MediaURLRefused) as error:
        await fetcher.fetch(url)
    return error.value


# --- fetched ---------------------------------------------------------------------------------


async def test_an_allowed_name_is_fetched_from_its_pinned_address(server, make_fetcher, resolver):
    metrics = Metrics()
    fetcher = make_fetcher(metrics)
    assert await fetcher.fetch(f"http://images.test:{server.port}/image.png?t=pinned") == PNG
    assert ("/image.png?t=pinned", f"images.test:{server.port}") in server.seen
    assert resolver.asked == ["images.test"]
    assert metrics.registry.get_sample_value("focalserve_media_fetches_total", {"outcome": "ok"}) == 1
    assert metrics.registry.get_sample_value("focalserve_media_fetch_bytes_total") == len(PNG)


async def test_requests_carry_a_fixed_user_agent_and_no_cookies(server, make_fetcher):
    await make_fetcher().fetch(f"http://images.test:{server.port}/chain/2?t=cookies")
    hops = [server.headers[path] for path in ("/chain/2?t=cookies", "/chain/1", "/chain/0")]
    assert all(headers["User-Agent"] == USER_AGENT for headers in hops)
    assert not any("Cookie" in headers or "Authorization" in headers for headers in hops)


async def test_redirects_within_the_limit_are_followed_and_each_hop_is_checked(server, make_fetcher, resolver):
    assert await make_fetcher(media_max_redirects=3).fetch(f"http://images.test:{server.port}/chain/3") == PNG
    assert server.paths()[-4:] == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]
    assert resolver.asked == ["images.test"] * 4  # resolved again for every hop, never reused


async def test_a_listed_ip_literal_in_an_exempt_network_is_fetched(server, make_fetcher, resolver):
    fetcher = make_fetcher(allowed_media_domains=["127.0.0.1"])
    assert await fetcher.fetch(f"http://127.0.0.1:{server.port}/image.png?t=literal") == PNG
    assert resolver.asked == []


async def test_data_urls_work_without_an_allow_list(make_fetcher, resolver):
    fetcher = make_fetcher(allowed_media_domains=[])
    assert await fetcher.fetch(f"data:image/png;base64,{base64.b64encode(PNG).decode()}") == PNG
    assert resolver.asked == []


# --- refused before connecting ---------------------------------------------------------------


async def test_remote_urls_are_off_without_an_allow_list(server, make_fetcher):
    refusal = await refused(make_fetcher(allowed_media_domains=[]), f"http://images.test:{server.port}/image.png")
    assert refusal.reason == "domain_not_allowed" and "data: URL" in refusal.message


async def test_hosts_off_the_list_are_refused_unresolved(make_fetcher, resolver):
    for url in ["http://evil.test/a.png", "http://images.test.evil.test/a.png", "http://evil.test#@images.test/"]:
        assert (await refused(make_fetcher(), url)).reason == "domain_not_allowed"
    assert resolver.asked == []


@pytest.mark.parametrize("name", ["metadata", "private", "cgnat", "mapped", "mixed", "loopback"])
async def test_names_resolving_to_non_global_addresses_are_refused(server, make_fetcher, name):
    metrics = Metrics()
    before = len(server.seen)
    refusal = await refused(make_fetcher(metrics), f"http://{name}.images.test:{server.port}/image.png")
    assert refusal.reason == "address_not_global" and refusal.status == 422
    assert "10.0.0.1" not in refusal.message and "169.254" not in refusal.message  # the address stays unnamed
    assert len(server.seen) == before
    assert metrics.registry.get_sample_value("focalserve_media_refusals_total", {"reason": "address_not_global"}) == 1


async def test_an_ip_literal_is_refused_unless_listed_and_exempt(server, make_fetcher):
    url = f"http://127.0.0.1:{server.port}/image.png?t=unlisted"
    assert (await refused(make_fetcher(), url)).reason == "domain_not_allowed"
    listed_not_exempt = make_fetcher(allowed_media_domains=["127.0.0.1"], media_private_networks=[])
    assert (await refused(listed_not_exempt, url)).reason == "address_not_global"
    assert (await refused(make_fetcher(allowed_media_domains=["169.254.169.254"]),
                          "http://169.254.169.254/latest/meta-data/")).reason == "address_not_global"
    assert not any("unlisted" in path for path in server.paths())


async def test_names_that_do_not_resolve_are_refused(make_fetcher):
    assert (await refused(make_fetcher(), "http://nowhere.images.test/a.png")).reason == "unresolvable"


async def test_the_system_resolver_is_never_asked_a_name_here(make_fetcher):
    """The default resolver, under `loopback_only`: a name gets no answer, so it is refused."""
    fetcher = make_fetcher(resolve=system_resolver)
    assert (await refused(fetcher, "http://images.test/a.png")).reason == "unresolvable"


async def test_parser_refusals_are_counted(make_fetcher):
    metrics = Metrics()
    fetcher = make_fetcher(metrics)
    assert (await refused(fetcher, "file:///etc/passwd")).reason == "scheme"
    assert (await refused(fetcher, "http://images.test\\@evil.test/")).reason == "malformed"
    assert metrics.registry.get_sample_value("focalserve_media_fetches_total", {"outcome": "refused"}) == 2


# --- redirects -------------------------------------------------------------------------------


async def test_a_redirect_to_an_ip_literal_is_refused(server, make_fetcher):
    refusal = await refused(make_fetcher(), f"http://images.test:{server.port}/to-ip")
    assert refusal.reason == "domain_not_allowed"
    assert not any("via=to-ip" in path for path in server.paths())


async def test_a_redirect_to_an_allowed_name_with_a_metadata_address_is_refused(server, make_fetcher, resolver):
    refusal = await refused(make_fetcher(), f"http://images.test:{server.port}/to-metadata")
    assert refusal.reason == "address_not_global"
    assert resolver.asked == ["images.test", "metadata.images.test"]


async def test_redirect_chains_past_the_limit_are_refused(server, make_fetcher):
    refusal = await refused(make_fetcher(media_max_redirects=3), f"http://images.test:{server.port}/chain/4")
    assert (refusal.reason, refusal.limit) == ("too_many_redirects", 3)
    assert "/chain/0" not in server.paths()[-4:]


async def test_no_redirect_is_followed_when_the_limit_is_zero(server, make_fetcher):
    refusal = await refused(make_fetcher(media_max_redirects=0), f"http://images.test:{server.port}/chain/1")
    assert refusal.reason == "redirect_refused"


async def test_a_redirect_without_a_location_is_refused(server, make_fetcher):
    refusal = await refused(make_fetcher(), f"http://images.test:{server.port}/no-location")
    assert refusal.reason == "redirect_refused"


# --- bodies, deadlines, upstream failures ----------------------------------------------------


async def test_an_undeclared_oversized_body_is_cut_off_mid_stream(server, make_fetcher):
    server.streamed.clear()
    metrics = Metrics()
    with pytest.raises(ImageTooLarge) as error:
        await make_fetcher(metrics).fetch(f"http://images.test:{server.port}/huge-chunked")
    assert error.value.limit == MAX_BYTES and error.value.status == 413
    assert server.streamed.wait(5)
    assert server.sent["/huge-chunked"] < HUGE // 2
    assert metrics.registry.get_sample_value("focalserve_media_fetch_bytes_total") <= 2 * MAX_BYTES
    assert metrics.registry.get_sample_value("focalserve_media_refusals_total", {"reason": "too_large"}) == 1


async def test_a_declared_oversized_body_is_refused_before_reading(server, make_fetcher):
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):
        await make_fetcher().fetch(f"http://images.test:{server.port}/huge-declared")
    assert time.monotonic() - started < 1  # the server holds the rest back for 3 s


async def test_a_slow_body_runs_into_the_deadline(server, make_fetcher):
    server.streamed.clear()
    metrics = Metrics()
    started = time.monotonic()
    with pytest.raises(MediaFetchFailed) as error:
        await make_fetcher(metrics, media_fetch_timeout_s=0.5).fetch(f"http://images.test:{server.port}/slow")
    assert error.value.reason == "timeout" and error.value.status == 422
    assert 0.5 <= time.monotonic() - started < 1.5
    assert 0 < server.sent["/slow"] < 1000
    assert metrics.registry.get_sample_value("focalserve_media_fetches_total", {"outcome": "failed"}) == 1
    assert server.streamed.wait(2)  # the server's next write found the connection closed


async def test_a_slow_resolver_runs_into_the_deadline(make_fetcher):
    async def never(host: str, port: int) -> list[Any]:
        await asyncio.sleep(30)
        return []

    with pytest.raises(MediaFetchFailed) as error:
        await make_fetcher(resolve=never, media_fetch_timeout_s=0.2).fetch("http://images.test/a.png")
    assert error.value.reason == "timeout"


async def test_an_upstream_error_status_is_named(server, make_fetcher):
    with pytest.raises(MediaFetchFailed) as error:
        await make_fetcher().fetch(f"http://images.test:{server.port}/missing.png")
    assert error.value.reason == "upstream_status" and "404" in error.value.message


async def test_a_refused_connection_is_a_client_error(make_fetcher):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(MediaFetchFailed) as error:
        await make_fetcher().fetch(f"http://images.test:{port}/image.png")
    assert error.value.reason == "connect" and error.value.status == 422


async def test_tls_names_the_host_not_the_address_and_verifies_certificates(make_fetcher):
    """The server offers no certificate at all: the handshake fails, after it has seen the server name."""
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)  # type: ignore[assignment]
    listener = socket.create_server(("127.0.0.1", 0))

    def handshake() -> None:
        connection, _ = listener.accept()
        with connection, contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(connection, server_side=True)

    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    with listener, pytest.raises(MediaFetchFailed) as error:
        await make_fetcher().fetch(f"https://images.test:{listener.getsockname()[1]}/image.png")
    thread.join(5)
    assert error.value.reason == "connect"
    assert server_names == ["images.test"]


# --- through the gateway's routes --------------------------------------------------------------


def test_image_urls_reach_embed_the_openai_route_and_adds(model_repository, tmp_path, server, resolver):
    """The routes' URLs go through the same fetcher (here with the table resolver); refusals are 422s
    that name the rule and the input."""
    settings = gateway_settings(model_repository, tmp_path / "data", **{**SETTINGS, "max_image_bytes": 1 << 20})
    with InProcessGateway(settings) as gateway:
        gateway.app.state.gateway.media = MediaFetcher(settings, None, resolver)
        url = f"http://images.test:{server.port}/image.png?t=routes"
        inline = {"image": base64.b64encode(PNG).decode(), "instruction": "what colour?"}
        by_url = {"image": {"url": url}, "instruction": "what colour?"}
        answered = gateway.post("/embed", json={"model": "tiny", "inputs": [inline, by_url]})
        assert answered.status_code == 200, answered.text
        first, second = (entry["embedding"] for entry in answered.json()["data"])
        assert first == second
        message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                {"type": "text", "text": "what colour?"}]}
        assert gateway.post("/v1/embeddings", json={"model": "tiny", "messages": [message]}).status_code == 200
        gateway.post("/collections", json={"name": "by-url", "model": "tiny"})
        added = gateway.post("/collections/by-url/items", json={"items": [{"id": "u", "image": {"url": url}}]})
        assert added.status_code == 201, added.text
        assert gateway.get("/collections/by-url/items/u").json()["source"] == url
        metadata = {"image": {"url": f"http://images.test:{server.port}/to-metadata"}, "instruction": "x"}
        refused = gateway.post("/embed", json={"model": "tiny", "inputs": [inline, metadata]})
        assert refused.status_code == 422
        assert refused.json()["error"] | {"message": ""} == {
            "code": "media_url_refused", "reason": "address_not_global", "loc": ["inputs", 1, "image"], "message": ""}


def test_a_default_gateway_takes_data_urls_and_refuses_http_ones(gateway, server):
    data_url = {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}
    assert gateway.post("/collections", json={"name": "urls-off", "model": "tiny"}).status_code == 201
    added = gateway.post("/collections/urls-off/items", json={"items": [{"id": "d", "image": data_url}]})
    assert added.status_code == 201, added.text
    assert gateway.get("/collections/urls-off/items/d").json()["source"] is None  # the data was the image
    remote = {"items": [{"id": "r", "image": {"url": f"http://images.test:{server.port}/image.png?t=off"}}]}
    refused = gateway.post("/collections/urls-off/items", json=remote)
    assert refused.status_code == 422 and refused.json()["error"]["reason"] == "domain_not_allowed"
    assert not any("t=off" in path for path in server.paths())
