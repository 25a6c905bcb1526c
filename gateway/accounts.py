"""Accounts: passwords kept as scrypt hashes, bearer tokens kept as their sha256.

scrypt is memory-hard (16 MiB per hash with the parameters below), so a stolen registry
costs an attacker memory as well as time per guess. Tokens are 32 random bytes: a plain
sha256 is enough to store them, since nobody can guess one to hash. Every comparison is
constant-time, and a login for an unknown user hashes as much as one for a known user, so
neither the answer nor its timing says which part was wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.store import Registry

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,31}")
RESERVED = frozenset({"admin"})  # the operator's name, for the admin token
PASSWORD_MIN, PASSWORD_MAX = 8, 256
# Hashing is the costly part of a login: at most this many at once bounds its memory.
_HASHING = threading.BoundedSemaphore(2)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash`, base64: the parameters travel with the hash, so they can be
    raised later without locking out anyone."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    with _HASHING:
        return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                              maxmem=SCRYPT_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Compared against when the user does not exist, so that login costs the same either way.
_NOBODY = hash_password(secrets.token_urlsafe(16))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, or the operator holding the admin token."""

    username: str
    admin: bool = False
    token_digest: str = ""  # names the caller for rate limiting without the secret


class Accounts:
    """Registration, login and the bearer-token check, over the registry."""

    def __init__(self, registry: Registry, token_ttl_s: float, admin_token: str = "") -> None:
        self._registry = registry
        self._ttl_s = token_ttl_s
        self._admin_token = admin_token.encode("utf-8") if admin_token else b""

    def register(self, username: str, password: str) -> bool:
        """False when the name is taken (or reserved)."""
        if username.lower() in RESERVED:
            return False
        return self._registry.add_user(username, hash_password(password))

    def log_in(self, username: str, password: str) -> tuple[str, float] | None:
        """(token, expires_at) for the right password; None otherwise, whatever was wrong."""
        stored = self._registry.password_hash(username)
        matches = verify_password(password, stored or _NOBODY)
        if stored is None or not matches:
            return None
        token = secrets.token_urlsafe(32)
        expires_at = time.time() + self._ttl_s
        self._registry.add_token(token_digest(token), username, expires_at)
        return token, expires_at

    def principal(self, token: str) -> Principal | None:
        """Who holds this token, or None (unknown, expired, or no token at all)."""
        if not token:
            return None
        digest = token_digest(token)
        if self._admin_token and hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                                                     self._admin_token):
            return Principal("admin", admin=True, token_digest=digest)
        username = self._registry.token_user(digest, time.time())
        return Principal(username, token_digest=digest) if username else None


def read_admin_token(path: Path | None) -> str:
    """The admin token from its file ("" for none): one line, at least 16 characters."""
    if path is None:
        return ""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the admin token must be at least 16 characters")
    return token
