"""API keys: an id anyone may see, and a secret shown once and stored only as a slow hash.

A key reads `fsk_<id>_<secret>`: the id finds the stored hash in one lookup, so a wrong key costs
one hash at most and an unknown id none. The secret is 32 random bytes, so the hash (scrypt, in
the standard library) guards a stolen database rather than a guessable password; its cost is paid
once per key and process (`KeyRegistry` remembers keys it has verified).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SCHEME = "fsk"
TOKEN = re.compile(rf"^{SCHEME}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")
PREFIX_CHARS = 4  # of the secret, kept in the clear to tell a key's rotations apart
# scrypt at 16 MiB and ~50 ms: the cost an attacker with the database pays per guess
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_BYTES = 16


@dataclass(frozen=True)
class IssuedKey:
    id: str
    token: str  # the whole key, for its holder; never stored
    prefix: str
    hash: str


def issue(key_id: str | None = None) -> IssuedKey:
    """A new key, or a new secret for `key_id` (a rotation keeps the id and its grants)."""
    key_id = key_id or secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = f"{SCHEME}_{key_id}_{secret}"
    return IssuedKey(key_id, token, f"{SCHEME}_{key_id}_{secret[:PREFIX_CHARS]}", hash_secret(secret))


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key; None for anything else."""
    match = TOKEN.match(token)
    return (match[1], match[2]) if match else None


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify(secret: str, stored: str) -> bool:
    """Whether `secret` is the one `stored` was made from (constant-time compare; the parameters are the
    stored ones, so hashes made with older costs still verify)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    presented = _scrypt(secret, base64.urlsafe_b64decode(salt + "=="), int(n), int(r), int(p))
    return hmac.compare_digest(presented, base64.urlsafe_b64decode(digest + "=="))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
