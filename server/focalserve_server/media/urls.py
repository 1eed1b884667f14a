"""The one parser of image URLs, and the allow-list of the hosts they may name.

An http(s) URL is parsed once, by httpx, the library that later sends the request, and the request
is built from those parsed parts: a URL that two parsers read differently (`a.example\\@b.example`)
cannot be checked as one host and fetched from another. Anything a parser might read two ways is
refused rather than guessed at: backslashes, whitespace and control characters, user info, IPv4
addresses written in other forms than dotted decimal (`0x7f.1`, `2130706433`, which resolvers
accept and URL parsers disagree on).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import httpx

from focalserve_server.errors import InvalidImage, MediaURLRefused
from focalserve_server.media.addresses import IPAddress

MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
DATA_URL = re.compile(r"data:(image/[a-z0-9.+-]+);base64,(.*)", re.IGNORECASE | re.DOTALL)
HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
# WHATWG URL parsers read a host whose last label is a number as an IPv4 address; so does getaddrinfo.
NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


@dataclass(frozen=True)
class DataImage:
    """A `data:image/<type>;base64,` URL's bytes: nothing to fetch."""

    media_type: str
    data: bytes


@dataclass(frozen=True)
class RemoteImage:
    """An http(s) image URL as parsed once; requests and redirects are built from it, never from text.

    `host` is normalised (lowercase ASCII as IDNA encodes it, no trailing dot; an IP literal in its
    compressed form); `address` is set when the host is an IP literal, which is never resolved.
    """

    url: httpx.URL
    host: str
    address: IPAddress | None

    @property
    def port(self) -> int:
        return self.url.port or DEFAULT_PORTS[self.url.scheme]

    @property
    def host_header(self) -> str:
        """The Host header naming this URL's host (and its port when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port is None else f"{host}:{self.url.port}"

    def at(self, address: IPAddress) -> httpx.URL:
        """This URL with `address` in place of the host: the connection goes where the checks went."""
        return httpx.URL(scheme=self.url.scheme, host=str(address), port=self.url.port, raw_path=self.url.raw_path)


def parse_image_url(text: str) -> DataImage | RemoteImage:
    """A `data:` URL decoded, or an http(s) URL parsed and checked in form (not yet against the
    allow-list or any address); InvalidImage for a bad data URL, MediaURLRefused otherwise."""
    if text[:5].lower() == "data:":
        return _data_image(text)
    return _remote_from_text(text)


def _remote_from_text(text: str) -> RemoteImage:
    _check_text(text)
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise MediaURLRefused("malformed", "the image URL is not a valid URL") from None
    return _remote_image(url)


def redirect_target(location: str, current: RemoteImage) -> RemoteImage:
    """A redirect's `Location`, resolved against the URL that answered it and parsed like a client's URL."""
    _check_text(location)
    try:
        url = current.url.join(location)
    except httpx.InvalidURL:
        raise MediaURLRefused("malformed", f"{current.host} redirected to an invalid URL") from None
    if len(str(url)) > MAX_URL_CHARS:
        raise MediaURLRefused("malformed", f"{current.host} redirected to a URL over {MAX_URL_CHARS} characters")
    return _remote_image(url)


def _data_image(text: str) -> DataImage:
    match = DATA_URL.fullmatch(text)
    if match is None:
        raise InvalidImage("a data URL must be data:image/<type>;base64,<data>")
    try:
        return DataImage(match[1].lower(), base64.b64decode(match[2], validate=True))
    except (binascii.Error, ValueError):
        raise InvalidImage("the data URL's image is not valid base64") from None


def _check_text(text: str) -> None:
    """Refuse what parsers disagree on before any parser reads it."""
    if len(text) > MAX_URL_CHARS:
        raise MediaURLRefused("malformed", f"the image URL is longer than {MAX_URL_CHARS} characters")
    if "\\" in text:
        raise MediaURLRefused("malformed", "the image URL contains a backslash")
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in text):
        raise MediaURLRefused("malformed", "the image URL contains whitespace or a control character")


def _remote_image(url: httpx.URL) -> RemoteImage:
    if url.scheme not in SCHEMES:
        scheme = f"not {url.scheme[:16]}:" if url.scheme else "the URL has none"
        raise MediaURLRefused("scheme", f"image URLs are http:, https: or data: ({scheme})")
    if url.userinfo:
        raise MediaURLRefused("malformed", "the image URL carries user info (user@host)")
    if url.port is not None and not 0 < url.port < 65536:
        raise MediaURLRefused("malformed", f"the image URL's port {url.port} is out of range")
    host = url.raw_host.decode("ascii").lower().removesuffix(".")
    if ":" in host:
        return RemoteImage(url, *_ip_literal(host, IPv6Address))
    if not HOST_NAME.fullmatch(host) or len(host) > 253:
        raise MediaURLRefused("malformed", "the image URL has no valid host name")
    if NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return RemoteImage(url, *_ip_literal(host, IPv4Address))
    return RemoteImage(url, host, None)


def _ip_literal(host: str, kind: type[IPv4Address] | type[IPv6Address]) -> tuple[str, IPAddress]:
    try:
        address = kind(host)
        if isinstance(address, IPv6Address) and address.scope_id is not None:
            raise ValueError("a zone identifier names an interface of this host")
    except ValueError:
        raise MediaURLRefused(
            "malformed", f"the image URL's host {host[:64]} is an IP address in a form other than "
                         f"{'dotted decimal' if kind is IPv4Address else 'plain IPv6'}"
        ) from None
    return str(address), address


def allowed_host_pattern(entry: str) -> str:
    """An allow-list entry (`images.example.com`, `*.example.com`, an IP) normalised as hosts are,
    so that both compare equal; ValueError for an entry that is not a host."""
    entry = entry.strip()
    wildcard = entry.startswith("*.")
    name = entry.removeprefix("*.")
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address, written as a URL writes it
    try:
        image = _remote_from_text(f"http://{name}/")
    except MediaURLRefused:
        image = None
    if image is None or image.url.port is not None or image.url.raw_path != b"/" or image.url.fragment:
        raise ValueError(f"{entry!r} is none of a host name, *.domain or IP address")
    if wildcard and image.address is not None:
        raise ValueError(f"{entry!r}: a wildcard covers the names below a domain, not addresses")
    return f"*.{image.host}" if wildcard else image.host


class DomainAllowList:
    """The hosts image URLs may name: `images.example.com` that host only, `*.example.com` any name
    below example.com (not example.com itself). An IP literal is allowed only where listed as such."""

    def __init__(self, entries: Iterable[str]) -> None:
        patterns = [allowed_host_pattern(entry) for entry in entries]
        self._hosts = frozenset(pattern for pattern in patterns if not pattern.startswith("*."))
        self._suffixes = tuple(pattern[1:] for pattern in patterns if pattern.startswith("*."))

    def __bool__(self) -> bool:
        return bool(self._hosts or self._suffixes)

    def permits(self, image: RemoteImage) -> bool:
        if image.host in self._hosts:
            return True
        return image.address is None and image.host.endswith(self._suffixes)
