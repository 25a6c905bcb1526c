"""Structured logs: one event per line on stderr, as key=value fields.

Event names are stable so they can be grepped (`event=task_done`); values with
spaces are quoted. Every process configures this once with `configure_logging`.
"""

from __future__ import annotations

import logging
import sys

_LOGGER = logging.getLogger("fedcluster")


def configure_logging(level: str = "INFO", *, component: str = "") -> None:
    """Send events to stderr at `level`; `component` prefixes each line (node, coordinator...)."""
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"component={component} " if component else ""
    handler.setFormatter(
        logging.Formatter(f"ts=%(asctime)s level=%(levelname)s {prefix}%(message)s")
    )
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(level.upper())
    _LOGGER.propagate = False
    # Thrift's own loggers print stray lines ("Could not connect to any of [...]") for
    # failures the caller already reports as events: keep them to real crashes.
    logging.getLogger("thrift").setLevel(logging.CRITICAL)


def _format_value(value: object) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' ="\n'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_event(event: str, **fields: object) -> str:
    """Render `event=<name> k=v ...` in the order given."""
    parts = [f"event={event}"]
    parts += [f"{key}={_format_value(value)}" for key, value in fields.items()]
    return " ".join(parts)


def log_event(event: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event line; cheap when the level is disabled."""
    if _LOGGER.isEnabledFor(level):
        _LOGGER.log(level, format_event(event, **fields))
