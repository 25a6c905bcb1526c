"""A handler's edge: the core's errors turned into the exceptions the IDL declares.

Each server lists its own mapping (core error types → declared exception, event to log);
the refusal of a token is the same everywhere, so it is listed once here, and so are the
calls both servers answer alike (EdgeHandler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple, TypeVar

from idl.gen.ttypes import InvalidRequest, Unauthorized
from runtime.auth import Denied
from runtime.events import log_event

T = TypeVar("T")


class Declared(NamedTuple):
    """Core errors of these types leave as `make(error)`, logged as `event` when one is named."""

    errors: type[Exception] | tuple[type[Exception], ...]
    make: Callable[[Any], Exception]
    event: str = ""


DENIED = Declared(Denied, lambda exc: Unauthorized(message=str(exc)), "call_denied")


@contextmanager
def declared_errors(call: str, mapping: Sequence[Declared]) -> Iterator[None]:
    """Re-raise the first matching core error as its declared exception; others pass through."""
    try:
        yield
    except Exception as exc:
        for entry in mapping:
            if isinstance(exc, entry.errors):
                if entry.event:
                    log_event(entry.event, call=call, reason=exc)
                raise entry.make(exc) from None
        raise


class EdgeHandler:
    """Both servers' handlers: ping open to health probes; every other call token-checked.

    `authorize` raises runtime.auth.Denied for a refused token; `store` answers
    missing_shards; `errors` maps the server's core errors to the IDL's.
    """

    def __init__(
        self, authorize: Callable[[str], None], store: Any, errors: Sequence[Declared]
    ) -> None:
        self._authorize = authorize
        self._store = store
        self._errors = errors

    def ping(self) -> bool:
        return True

    def declared(self, call: str) -> AbstractContextManager[None]:
        """Within it, the server's core errors leave as the IDL's exceptions."""
        return declared_errors(call, self._errors)

    def check_token(self, call: str, token: str | None) -> None:
        """Unauthorized (declared) unless the server accepts `token`."""
        with self.declared(call):
            self._authorize(token or "")

    def missing_shards(self, digests: list[str], token: str = "") -> list[str]:
        self.check_token("missing_shards", token)
        return self._store.missing(list(digests or []))


def required(argument: T | None, call: str, name: str) -> T:
    """A struct argument the message cut off (thrift passes None) is an invalid request."""
    if argument is None:
        raise InvalidRequest(message=f"{call}: the {name} argument is missing")
    return argument
