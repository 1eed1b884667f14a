"""Keys, grants and limit fields without a server: the pieces `tests/reliability/test_auth.py` and
`tests/integration/test_shared_access.py` exercise through the API."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from focalserve_client.schemas import Grant as GrantSpec
from focalserve_client.schemas import KeyLimits
from focalserve_server.access import secrets
from focalserve_server.access.grants import Grant, Principal
from focalserve_server.access.limits import quotas, ratelimit_fields
from focalserve_server.errors import Forbidden, NotFound


def test_a_key_verifies_against_its_hash_only_and_shows_only_a_prefix():
    issued = secrets.issue()
    key_id, secret = secrets.parse(issued.token) or ("", "")
    assert key_id == issued.id and secrets.verify(secret, issued.hash)
    assert issued.token.startswith(issued.prefix) and len(issued.prefix) < len(issued.token) // 2
    other = secret[:-1] + ("B" if secret.endswith("A") else "A")
    assert secret not in issued.hash and not secrets.verify(other, issued.hash)
    rotated = secrets.issue(issued.id)
    assert rotated.id == issued.id and not secrets.verify(secret, rotated.hash)
    assert secrets.hash_secret(secret) != issued.hash  # salted


@pytest.mark.parametrize("token", ["", "fsk_", "fsk_0123456789ab_short", "fsk_0123456789AB_" + "x" * 43,
                                   "Bearer fsk_0123456789ab_" + "x" * 43, "fsk_0123456789ab_" + "x" * 44])
def test_malformed_keys_do_not_parse(token):
    assert secrets.parse(token) is None


def test_grants_rank_by_the_strongest_matching_pattern():
    principal = Principal("k", (Grant("a-*", "write"), Grant("a-admin", "admin"), Grant("shared", "read")))
    assert [principal.rank(name) for name in ("a-x", "a-admin", "shared", "shared-2", "b")] == [2, 3, 1, 0, 0]
    assert principal.visible(["a-x", "b", "shared"]) == ["a-x", "shared"]
    with pytest.raises(NotFound, match="collection 'b' does not exist"):
        principal.require("read", "b")
    with pytest.raises(Forbidden):
        principal.require("write", "shared")
    with pytest.raises(Forbidden):
        principal.require_key_admin()
    assert Principal("root", (Grant("*", "admin"),)).manages_keys
    assert not Principal("a-admin", (Grant("a-*", "admin"),)).manages_keys


@pytest.mark.parametrize("pattern", ["", "a b", "a/b", "../x", "x" * 129])
def test_grant_patterns_are_names_or_globs(pattern):
    with pytest.raises(ValidationError):
        GrantSpec(collections=pattern, action="read")


def test_the_ratelimit_fields_name_each_quota_and_what_remains():
    limits = KeyLimits(requests=100, images=1000, burst=10, window_s=60)
    assert [quota.name for quota in quotas(limits)] == ["burst", "requests", "images"]
    fields = ratelimit_fields(limits, {"burst": 9, "requests": 0, "images": 990})
    assert fields["RateLimit-Policy"] == '"burst";q=10;w=1, "requests";q=100;w=60, "images";q=1000;w=60'
    burst, requests, images = fields["RateLimit"].split(", ")
    assert burst == '"burst";r=9;t=1'
    assert requests.startswith('"requests";r=0;t=') and images.startswith('"images";r=990;t=')
    assert ratelimit_fields(KeyLimits(), {}) == {}
