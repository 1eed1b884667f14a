"""`MediaFetcher`: the bytes an image URL names, fetched so that the URL never decides where the
gateway connects.

Each decision is made once, on one value: the URL is parsed once (`urls`), its host checked against
the allow-list, resolved once and every address checked (`addresses`), and the connection goes to
the checked address, the name kept for the Host header and for TLS (SNI and the certificate check).
A redirect is a new URL, checked the same way; the body is counted as it arrives, never read whole
first. Resolution, connections, redirects and body run under one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx

from focalserve_server.config import Settings
from focalserve_server.errors import ImageTooLarge, MediaFetchFailed, MediaURLRefused
from focalserve_server.media.addresses import AddressPolicy, IPAddress, Resolver, system_resolver
from focalserve_server.media.urls import DataImage, DomainAllowList, RemoteImage, parse_image_url, redirect_target
from focalserve_server.metrics import Metrics

USER_AGENT = "focalserve-media-fetch"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}


class MediaFetcher:
    """Image bytes for the URLs clients send in place of inline images: `data:` URLs always, http(s)
    URLs only on hosts of `allowed_media_domains` (none by default, and then no http(s) URL at all)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 resolver: Resolver = system_resolver) -> None:
        self._allowed = DomainAllowList(settings.allowed_media_domains)
        self._addresses = AddressPolicy(settings.media_private_networks)
        self._max_bytes = settings.max_image_bytes
        self._timeout_s = settings.media_fetch_timeout_s
        self._max_redirects = settings.media_max_redirects
        self._metrics = metrics
        self._resolve = resolver
        # A bare transport follows no redirects and keeps no cookies; trust_env=False: no proxy from the
        # environment. No kept connections: a pooled one is keyed by address, and would carry one
        # host's TLS session into a request for another host at the same address.
        self._transport = httpx.AsyncHTTPTransport(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))

    async def fetch(self, text: str) -> bytes:
        """The image bytes `text` names: a `data:` URL decoded, an http(s) URL fetched.

        Raises InvalidImage (a bad data: URL), MediaURLRefused (the URL breaks a rule; before any
        connection), MediaFetchFailed (timeout, connection, upstream status), ImageTooLarge (over
        `max_image_bytes`, declared or counted): all 4xx.
        """
        with self._recorded():
            image = parse_image_url(text)
            if isinstance(image, DataImage):
                return image.data
            data = await self._within_deadline(image)
        self._record("ok")
        return data

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _within_deadline(self, image: RemoteImage) -> bytes:
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                return await self._follow(image)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise MediaFetchFailed(
                "timeout", f"fetching the image from {image.host} took longer than {self._timeout_s:g} s"
            ) from None

    async def _follow(self, image: RemoteImage) -> bytes:
        """The body at `image`, after up to `media_max_redirects` redirects, each checked as a new URL."""
        redirects = 0
        while True:
            address = await self._checked_address(image)
            async with self._response(image, address) as response:
                if response.status_code not in REDIRECTS:
                    return await self._body(image, response)
                location = response.headers.get("location")
            image = self._redirected(image, location, redirects)
            redirects += 1

    async def _checked_address(self, image: RemoteImage) -> IPAddress:
        """Where to connect for `image`: its host allowed, and every address the host has passing the
        address rule (one that fails is enough to refuse: the resolver's order is not ours to trust)."""
        if not self._allowed:
            raise MediaURLRefused("domain_not_allowed", "remote image URLs are off on this gateway; send the image "
                                                        "inline or as a data: URL")
        if not self._allowed.permits(image):
            raise MediaURLRefused("domain_not_allowed", f"this gateway does not fetch images from {image.host}")
        addresses = [image.address] if image.address is not None else await self._resolved(image)
        for address in addresses:
            kind = self._addresses.refusal(address)
            if kind is not None:  # the address itself is not named: it may be one the client should not learn
                raise MediaURLRefused("address_not_global", f"{image.host} has an address this gateway does not "
                                                            f"connect to ({kind})")
        return addresses[0]

    async def _resolved(self, image: RemoteImage) -> list[IPAddress]:
        try:
            addresses = list(await self._resolve(image.host, image.port))
        except OSError:
            addresses = []
        if not addresses:
            raise MediaURLRefused("unresolvable", f"the host {image.host} does not resolve")
        return addresses

    @contextlib.asynccontextmanager
    async def _response(self, image: RemoteImage, address: IPAddress) -> AsyncIterator[httpx.Response]:
        """The response of `address` to a GET of `image`, its body still to read; a transport error
        while it is open (connecting, TLS, reading) is a MediaFetchFailed."""
        request = httpx.Request("GET", image.at(address), headers={"Host": image.host_header, **HEADERS},
                                extensions={"sni_hostname": image.host})
        try:
            response = await self._transport.handle_async_request(request)
            try:
                yield response
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            detail = f"{type(error).__name__}: {error}"[:200]
            raise MediaFetchFailed("connect", f"the connection to {image.host} failed ({detail})") from None

    def _redirected(self, image: RemoteImage, location: str | None, redirects: int) -> RemoteImage:
        if self._max_redirects == 0:
            raise MediaURLRefused("redirect_refused", f"{image.host} answered with a redirect, and this gateway "
                                                      "follows none")
        if redirects >= self._max_redirects:
            raise MediaURLRefused("too_many_redirects", f"{image.host} redirected again after "
                                                        f"{self._max_redirects} redirects", limit=self._max_redirects)
        if location is None:
            raise MediaURLRefused("redirect_refused", f"{image.host} answered a redirect without a Location")
        return redirect_target(location, image)

    async def _body(self, image: RemoteImage, response: httpx.Response) -> bytes:
        if not 200 <= response.status_code < 300:
            raise MediaFetchFailed("upstream_status", f"{image.host} answered {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ImageTooLarge(f"the image at {image.host} declares {declared} bytes; the limit is "
                                f"{self._max_bytes}", limit=self._max_bytes)
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self._max_bytes:
                    raise ImageTooLarge(f"the image at {image.host} is over {self._max_bytes} bytes, the limit",
                                        limit=self._max_bytes)
        finally:
            if self._metrics is not None:
                self._metrics.media_fetch_bytes.inc(len(body))
        return bytes(body)

    @contextlib.contextmanager
    def _recorded(self) -> Iterator[None]:
        """Count refusals (by reason) and failures as they leave."""
        try:
            yield
        except MediaURLRefused as refusal:
            self._record("refused", refusal.reason)
            raise
        except ImageTooLarge:
            self._record("refused", "too_large")
            raise
        except MediaFetchFailed:
            self._record("failed")
            raise

    def _record(self, outcome: str, reason: str | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.media_fetches.labels(outcome).inc()
        if reason is not None:
            self._metrics.media_refusals.labels(reason).inc()
