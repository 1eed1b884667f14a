"""Which addresses an image fetch may connect to, and the resolver that finds a host's.

A fetch may reach only globally reachable addresses, so that a client cannot aim the gateway at its
own network: loopback services, the VPC, the cloud's metadata service at 169.254.169.254. The
ranges are IANA's special-purpose registries, named so that a refusal says which; `is_global` alone
is not enough, its tables change across Python versions (3.11.7 calls 2002::/16 and ::a00:1 global).
IPv6 forms that carry an IPv4 address are judged by that address too: ::ffff:10.0.0.1 is 10.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
# A host name and port -> its addresses; OSError (socket.gaierror) or none when it does not resolve.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

# First match wins: the narrower ranges come before the ones containing them.
IPV4_RANGES = tuple((IPv4Network(network), kind) for network, kind in (
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
))
IPV6_RANGES = tuple((IPv6Network(network), kind) for network, kind in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("100::/64", "discard-only"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignment"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
))
GLOBAL_UNICAST = IPv6Network("2000::/3")
NAT64 = IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = IPv6Network("::/96")
# Forms whose packets reach the IPv4 address itself (a dual-stack socket, a NAT64 translator): a
# global one may be fetched from. The others tunnel through relays and are refused whatever they carry.
TRANSLATED = ("IPv4-mapped", "NAT64")


def non_global_kind(address: IPAddress) -> str | None:
    """None when `address` is globally reachable; otherwise what kind of address it is ("loopback",
    "private", "link-local", "shared (CGNAT)", "private (IPv4-mapped)", ...)."""
    if isinstance(address, IPv6Address) and (embedded := _embedded_ipv4(address)) is not None:
        form, ipv4 = embedded
        kind = non_global_kind(ipv4)
        if kind is not None:
            return f"{kind} ({form})"
        return None if form in TRANSLATED else form
    ranges = IPV4_RANGES if isinstance(address, IPv4Address) else IPV6_RANGES
    for network, kind in ranges:
        if address in network:
            return kind
    if isinstance(address, IPv6Address) and address not in GLOBAL_UNICAST:
        return "reserved"
    return None if address.is_global else "reserved"  # what this Python's tables know beyond ours


def _embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and the form that carries it."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    if address in NAT64:
        return "NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are not IPv4-compatible
        return "IPv4-compatible", IPv4Address(int(address))
    return None


class AddressPolicy:
    """The rule a fetch's addresses pass: globally reachable, or inside a network the operator
    exempts (`media_private_networks`, for an image store inside the VPC: every address there becomes
    reachable by whoever may send a URL)."""

    def __init__(self, exempt_networks: Iterable[str]) -> None:
        self._exempt = tuple(ip_network(network) for network in exempt_networks)

    def refusal(self, address: IPAddress) -> str | None:
        """None when the gateway may connect to `address`; otherwise the kind of address it is."""
        if any(address in network for network in self._exempt):
            return None
        return non_global_kind(address)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's addresses from the system's resolver (getaddrinfo, on asyncio's thread pool)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ip_address(info[4][0]) for info in infos]
