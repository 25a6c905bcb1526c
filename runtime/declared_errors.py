"""A handler's edge: the core's errors turned into the exceptions the IDL declares.

Each server lists its own mapping (core error types → declared exception, event to log);
the refusal of a token is the same everywhere, so it is listed once here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from idl.gen.ttypes import Unauthorized
from runtime.auth import Denied
from runtime.events import log_event


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
