"""Which connections a server admits: a cap in all and per peer, the longest idle gives way.

Why: a server spends a thread and a slot on every connection. With a plain cap, a few
hundred connections that never send a byte lock out everyone else (a `client status`,
the coordinator's heartbeats) until they time out. Here a connection waiting for the
first byte of its next frame is idle and gives way to a newcomer, the longest idle
first, and among those first the ones that never sent a message (a flood of silent
connections cannot push out a client's pooled, proven one); one address cannot take
more than its share, and at its cap it gives up its own; only when nothing is idle is a
new connection refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from idl.framing import MAX_MESSAGE_BYTES

# Above what one peer legitimately opens: a coordinator calls one node from up to 256
# round workers plus as many straggler backups and 16 heartbeat probes (528), and a whole
# local cluster calls from 127.0.0.1. The rest of the slots stay for other addresses.
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_PEER = 768
# Frames being received (or decoded) at once: a dozen 80 MB models.
IN_FLIGHT_BYTES = 1024 * 1024 * 1024
# A frame whose first byte arrived must be whole this much later: 256 MB at 4.3 MB/s.
FRAME_TIMEOUT_S = 60.0
# An accepted connection that sends nothing for this long is closed by the server;
# clients drop pooled connections well before that (idl.rpc.POOL_IDLE_S).
IDLE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServerLimits:
    """Every bound a ThriftServer puts on its peers; the fields are its keyword arguments."""

    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    max_frame_bytes: int = MAX_MESSAGE_BYTES
    in_flight_bytes: int = IN_FLIGHT_BYTES
    idle_timeout_s: float = IDLE_TIMEOUT_S
    frame_timeout_s: float = FRAME_TIMEOUT_S

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:  # also nan
                raise ValueError(f"{name} must be positive, got {value}")
        if self.in_flight_bytes < self.max_frame_bytes:
            raise ValueError(
                f"in_flight_bytes ({self.in_flight_bytes}) below max_frame_bytes "
                f"({self.max_frame_bytes}): a frame of the largest size could never arrive"
            )

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of ThriftServer."""
        return dict(vars(self))


@dataclass(eq=False)
class Slot:
    """One accepted connection as the table sees it."""

    peer: str
    sock: socket.socket  # the TLS-wrapped socket once the handshake is done
    transport: Any = None  # a FramedTransport once serving: it knows when it is idle
    waiting_since: float | None = None  # idle before there is a transport (TLS)
    evicted: bool = False
    opened: float = field(default_factory=time.monotonic)

    def idle_since(self) -> float | None:
        """Since when it has waited for the first byte of a frame; None when busy."""
        if self.transport is not None:
            return self.transport.idle_since
        return self.waiting_since

    def eviction_rank(self) -> tuple[bool, float] | None:
        """Smallest goes first: never used, then longest idle; None when busy."""
        since = self.idle_since()
        if since is None:
            return None
        used = self.transport is not None and self.transport.n_frames > 0
        return (used, since)

    def shut(self) -> None:
        """Wake its thread from any recv (which then sees the end of the stream)."""
        # socket.socket's own shutdown: an SSLSocket's would drop its TLS state under the
        # reading thread's feet. OSError: its own thread closed it already.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


@dataclass(frozen=True)
class Admission:
    """What to do with a new connection: refuse it (reason), or admit it after `evict`."""

    refused: str = ""
    evict: Slot | None = None


class ConnectionTable:
    """The connections a server holds, by peer address (thread-safe)."""

    def __init__(self, max_connections: int, max_per_peer: int) -> None:
        self._max = max_connections
        self._max_per_peer = max_per_peer
        self._slots: set[Slot] = set()
        self._by_peer: dict[str, set[Slot]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def n_idle(self) -> int:
        """Connections waiting for their next message (an instant's view)."""
        with self._lock:
            return sum(slot.idle_since() is not None for slot in self._slots)

    def admit(self, slot: Slot) -> Admission:
        """Add `slot` unless it must be refused; the slot to evict for it is taken out.

        A peer at its cap gives up its own longest-idle connection; otherwise a full
        table gives up the longest idle of all. Nothing idle: refused.
        """
        with self._lock:
            mine = self._by_peer.get(slot.peer, set())
            victim = None
            if len(mine) >= self._max_per_peer:
                victim = _longest_idle(mine)
                if victim is None:
                    return Admission(refused="too_many_from_peer")
            elif len(self._slots) >= self._max:
                victim = _longest_idle(self._slots)
                if victim is None:
                    return Admission(refused="too_many")
            if victim is not None:
                self._discard(victim)
                victim.evicted = True
            self._slots.add(slot)
            self._by_peer.setdefault(slot.peer, set()).add(slot)
            return Admission(evict=victim)

    def remove(self, slot: Slot) -> None:
        """Forget `slot` (its connection ended); a no-op when it was evicted already."""
        with self._lock:
            self._discard(slot)

    def _discard(self, slot: Slot) -> None:
        self._slots.discard(slot)
        mine = self._by_peer.get(slot.peer)
        if mine is not None:
            mine.discard(slot)
            if not mine:
                del self._by_peer[slot.peer]


def _longest_idle(slots: set[Slot]) -> Slot | None:
    """The idle slot to give way first (see Slot.eviction_rank); None if all are busy."""
    best, best_rank = None, None
    for slot in slots:
        rank = slot.eviction_rank()
        if rank is not None and (best_rank is None or rank < best_rank):
            best, best_rank = slot, rank
    return best
