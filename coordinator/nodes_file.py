"""Read compute_nodes.txt: `host,port` per line, blank lines and `#` comments allowed.

The seed's format, kept so existing node lists work unchanged; `host:port` is accepted too.
"""

from __future__ import annotations

from pathlib import Path

from idl.rpc import Address


class NodesFileError(ValueError):
    """A nodes file that cannot be read or holds a bad line (the message names file and line)."""


def parse_nodes(text: str, name: str = "compute_nodes.txt") -> list[Address]:
    """Parse the nodes file content; duplicates are dropped, first occurrence order kept."""
    addresses: list[Address] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            address = Address.parse(line)
        except ValueError as exc:
            raise NodesFileError(f"{name} line {number}: {exc}") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def read_nodes_file(path: Path) -> list[Address]:
    """Read and parse `path`; NodesFileError if it cannot be read or a line is malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise NodesFileError(f"cannot read nodes file {path}: {reason}") from None
    return parse_nodes(text, str(path))
