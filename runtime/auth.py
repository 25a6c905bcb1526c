"""The cluster's shared-secret token: one comparison for every service.

Tokens are compared as utf-8 bytes in constant time (hmac.compare_digest on str accepts
ASCII only and raises TypeError on anything else). A token is never logged nor put in an
error message: callers say "missing or wrong", never what was sent or expected.
"""

from __future__ import annotations

import hmac

DENIED_HINT = "pass the cluster's token (--token-file PATH or FEDCLUSTER_TOKEN)"


def token_matches(expected: str, given: str | None) -> bool:
    """True when no token is configured, or `given` equals `expected` byte for byte."""
    if not expected:
        return True
    # surrogatepass: a str that is not valid unicode compares unequal instead of raising.
    return hmac.compare_digest(
        (given or "").encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class Denied(PermissionError):
    """A call carried a missing or wrong token."""


def authorize(expected: str, given: str | None, server: str) -> None:
    """Denied unless no token is configured or `given` matches it (never says which)."""
    if not token_matches(expected, given):
        raise Denied(f"{server} refused the call: token missing or wrong; {DENIED_HINT}")
