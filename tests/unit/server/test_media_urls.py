"""Image URLs: the one parser, the allow-list, the address rule and their settings. Addresses here are
only classified, never connected to."""

from __future__ import annotations

import base64
from ipaddress import ip_address

import httpx
import pytest
from pydantic import ValidationError

from focalserve_server.config import Settings
from focalserve_server.errors import InvalidImage, MediaURLRefused
from focalserve_server.media.addresses import AddressPolicy, non_global_kind
from focalserve_server.media.urls import (
    DataImage,
    DomainAllowList,
    RemoteImage,
    allowed_host_pattern,
    parse_image_url,
    redirect_target,
)


def remote(text: str) -> RemoteImage:
    image = parse_image_url(text)
    assert isinstance(image, RemoteImage)
    return image


def refusal(text: str) -> str:
    with pytest.raises(MediaURLRefused) as refused:
        parse_image_url(text)
    assert refused.value.status == 422 and refused.value.code == "media_url_refused"
    return refused.value.reason


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("fd00::1", "private"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "this network"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::ffff:10.0.0.1", "private (IPv4-mapped)"),
    ("::ffff:169.254.169.254", "link-local (IPv4-mapped)"),
    ("::a00:1", "private (IPv4-compatible)"),
    ("::808:808", "IPv4-compatible"),  # a deprecated tunnel, whatever it carries
    ("2002:a00:1::", "private (6to4)"),
    ("2002:808:808::", "6to4"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private (Teredo)"),  # client 10.0.0.1, obfuscated
    ("64:ff9b::a00:1", "private (NAT64)"),
    ("64:ff9b::7f00:1", "loopback (NAT64)"),
    ("64:ff9b:1::808:808", "NAT64 (local use)"),
    ("100::1", "discard-only"),
    ("4000::1", "reserved"),  # outside 2000::/3, the global unicast space
])
def test_non_global_addresses_are_refused_by_kind(address, kind):
    assert non_global_kind(ip_address(address)) == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_global_addresses_pass(address):
    assert non_global_kind(ip_address(address)) is None


def test_exempt_networks_admit_only_their_addresses():
    policy = AddressPolicy(["127.0.0.1/32", "10.1.0.0/16"])
    assert policy.refusal(ip_address("127.0.0.1")) is None
    assert policy.refusal(ip_address("10.1.2.3")) is None
    assert policy.refusal(ip_address("127.0.0.2")) == "loopback"
    assert policy.refusal(ip_address("10.2.0.1")) == "private"
    assert policy.refusal(ip_address("169.254.169.254")) == "link-local"
    assert AddressPolicy([]).refusal(ip_address("127.0.0.1")) == "loopback"


# --- the parser ------------------------------------------------------------------------------


def test_data_urls_decode():
    image = parse_image_url("data:image/png;base64," + base64.b64encode(b"\x89PNG...").decode())
    assert image == DataImage("image/png", b"\x89PNG...")
    assert parse_image_url("DATA:Image/JPEG;base64,/9j/") == DataImage("image/jpeg", b"\xff\xd8\xff")


@pytest.mark.parametrize("text", [
    "data:image/png;base64,not base64!",
    "data:image/png;base64,iVBOR\nw0K",
    "data:image/png;base64,abc",  # bad padding
    "data:text/html;base64,PGgxPg==",
    "data:image/png,rawbytes",
    "data:,",
])
def test_bad_data_urls_are_invalid_images(text):
    with pytest.raises(InvalidImage):
        parse_image_url(text)


def test_http_urls_are_parsed_once_with_a_normalised_host():
    image = remote("https://Images.Example.COM./a/b.png?size=2&sig=x#frag")
    assert (image.host, image.address, image.port) == ("images.example.com", None, 443)
    assert image.host_header == "images.example.com"
    assert image.at(ip_address("203.0.113.9")) == httpx.URL("https://203.0.113.9/a/b.png?size=2&sig=x")
    assert remote("http://images.example.com:8080/").host_header == "images.example.com:8080"
    assert remote("http://Bücher.example/").host == "xn--bcher-kva.example"


def test_ip_literal_hosts_are_parsed_as_addresses():
    assert remote("http://203.0.113.9/").address == ip_address("203.0.113.9")
    image = remote("http://[::ffff:127.0.0.1]:81/")
    assert (image.host, image.address, image.host_header) == ("::ffff:7f00:1", ip_address("::ffff:127.0.0.1"),
                                                              "[::ffff:7f00:1]:81")
    assert image.at(ip_address("2606:4700::1111")) == httpx.URL("http://[2606:4700::1111]:81/")


@pytest.mark.parametrize(("text", "reason"), [
    ("file:///etc/passwd", "scheme"),
    ("ftp://images.example.com/a.png", "scheme"),
    ("gopher://images.example.com:70/_", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("//images.example.com/a.png", "scheme"),
    ("images.example.com/a.png", "scheme"),
    ("http://allowed.example\\@evil.example/", "malformed"),
    ("http://allowed.example@evil.example/", "malformed"),
    ("http://user:secret@allowed.example/", "malformed"),
    ("http://0x7f.1/", "malformed"),
    ("http://2130706433/", "malformed"),
    ("http://127.1/", "malformed"),
    ("http://0177.0.0.1/", "malformed"),
    ("http://images.0x10/", "malformed"),
    ("http://allowed.example/\tx", "malformed"),
    ("http://allowed\t.example/", "malformed"),
    ("http://allowed.example/\nx", "malformed"),
    ("http://allowed.example/ x", "malformed"),
    ("http://allowed.example/\u00a0x", "malformed"),
    ("http://allowed\u200b.example/", "malformed"),
    ("http://allowed.example/\x00", "malformed"),
    ("http:///a.png", "malformed"),
    ("http://:80/a.png", "malformed"),
    ("http://a..example/", "malformed"),
    ("http://a<b.example/", "malformed"),
    ("http://allowed.example:0/", "malformed"),
    ("http://allowed.example:65536/", "malformed"),
    ("http://[fe80::1%25eth0]/", "malformed"),
    ("http://[::1/", "malformed"),
    ("http://allowed.example/" + "a" * 2048, "malformed"),
])
def test_refused_urls_name_their_reason(text, reason):
    assert refusal(text) == reason


def test_parser_differentials_resolve_to_the_host_that_is_fetched():
    """What a browser-style parser might read as allowed.example is, for the fetch, another host."""
    assert remote("http://evil.example#@allowed.example/").host == "evil.example"
    assert remote("http://allowed.example.evil.example/").host == "allowed.example.evil.example"
    assert remote("http://ALLOWED.example./x").host == "allowed.example"


def test_messages_name_the_host_never_the_url():
    with pytest.raises(MediaURLRefused) as refused:
        parse_image_url("http://token:hunter2@images.example.com/?key=hunter2")
    assert "hunter2" not in refused.value.message


def test_redirects_resolve_against_the_current_url_and_parse_alike():
    current = remote("https://images.example.com:8443/a/b.png?sig=1")
    assert redirect_target("c.png", current).url == httpx.URL("https://images.example.com:8443/a/c.png")
    assert redirect_target("//cdn.example.com/x", current).host == "cdn.example.com"
    assert redirect_target("http://127.0.0.1:9/", current).address == ip_address("127.0.0.1")
    for location, reason in [("file:///etc/passwd", "scheme"), ("data:image/png;base64,AA==", "scheme"),
                             ("http://a\\@b/", "malformed"), ("http://2130706433/", "malformed")]:
        with pytest.raises(MediaURLRefused) as refused:
            redirect_target(location, current)
        assert refused.value.reason == reason


# --- the allow-list --------------------------------------------------------------------------


def test_allow_list_matches_hosts_and_subdomains():
    allowed = DomainAllowList(["images.example.com", "*.cdn.example", "203.0.113.9", "[2606:4700::1111]"])
    permitted = [
        "http://images.example.com/", "http://IMAGES.example.com./", "http://a.cdn.example/", "http://a.b.cdn.example/",
        "http://203.0.113.9/", "http://[2606:4700:0::1111]/",
    ]
    refused = [
        "http://example.com/", "http://x.images.example.com/", "http://cdn.example/", "http://acdn.example/",
        "http://images.example.com.evil.example/", "http://evil.example#@images.example.com/", "http://203.0.113.10/",
    ]
    assert all(allowed.permits(remote(text)) for text in permitted)
    assert not any(allowed.permits(remote(text)) for text in refused)
    assert not DomainAllowList([])


@pytest.mark.parametrize("entry", ["*.113.9", "*.0.113.9", "*.::1", "*.[::1]"])
def test_wildcards_never_cover_addresses(entry):
    with pytest.raises(ValueError):
        allowed_host_pattern(entry)


@pytest.mark.parametrize(("entry", "pattern"), [
    ("images.example.com", "images.example.com"),
    (" *.Example.COM. ", "*.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("::1", "::1"),
    ("[2606:4700:0::1111]", "2606:4700::1111"),
])
def test_allow_list_entries_are_normalised_as_hosts_are(entry, pattern):
    assert allowed_host_pattern(entry) == pattern


@pytest.mark.parametrize("entry", [
    "", "*.", "images.example.com:443", "images.example.com/a", "user@images.example.com", "*.203.0.113.9",
    "2130706433", "https://images.example.com", "a b", "images.example.com#",
])
def test_allow_list_entries_that_are_not_hosts_are_refused(entry):
    with pytest.raises(ValueError):
        allowed_host_pattern(entry)


# --- settings --------------------------------------------------------------------------------


def test_settings_read_lists_comma_separated_or_as_json(monkeypatch):
    monkeypatch.setenv("FOCALSERVE_ALLOWED_MEDIA_DOMAINS", "images.example.com, *.CDN.example ,")
    monkeypatch.setenv("FOCALSERVE_MEDIA_PRIVATE_NETWORKS", '["10.1.0.0/16", "fd00::/8"]')
    settings = Settings()
    assert settings.allowed_media_domains == ["images.example.com", "*.cdn.example"]
    assert settings.media_private_networks == ["10.1.0.0/16", "fd00::/8"]
    assert (settings.media_fetch_timeout_s, settings.media_max_redirects) == (10.0, 3)


def test_settings_default_to_no_remote_urls(monkeypatch):
    monkeypatch.delenv("FOCALSERVE_ALLOWED_MEDIA_DOMAINS", raising=False)
    monkeypatch.delenv("FOCALSERVE_MEDIA_PRIVATE_NETWORKS", raising=False)
    settings = Settings()
    assert settings.allowed_media_domains == [] and settings.media_private_networks == []


@pytest.mark.parametrize(("name", "value"), [
    ("allowed_media_domains", ["images.example.com:443"]),
    ("media_private_networks", ["10.0.0.1/8"]),  # host bits set: a typo, not a network
    ("media_private_networks", ["not-a-network"]),
    ("media_max_redirects", -1),
    ("media_fetch_timeout_s", 0),
])
def test_settings_refuse_bad_media_values(name, value):
    with pytest.raises(ValidationError):
        Settings(**{name: value})
