"""What a node reports about its own load: counters and a moving average of service time."""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Weight of the newest task in the service-time average: recent enough to follow a
# node that became loaded within a few tasks, smooth enough to ignore one outlier.
EMA_ALPHA = 0.3


@dataclass(frozen=True)
class LoadSnapshot:
    tasks_in_flight: int
    recent_service_s: float
    tasks_done: int
    tasks_declined: int


class NodeStats:
    """Thread-safe task counters: in flight from acceptance to reply; done; declined."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._done = 0
        self._declined = 0
        self._service_s = 0.0

    def declined(self) -> None:
        with self._lock:
            self._declined += 1

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self, total_s: float | None) -> None:
        """A task left the node; `total_s` is its service time, None if it failed."""
        with self._lock:
            self._in_flight -= 1
            if total_s is None:
                return
            self._done += 1
            first = self._done == 1
            self._service_s = total_s if first else (
                EMA_ALPHA * total_s + (1 - EMA_ALPHA) * self._service_s
            )

    def snapshot(self) -> LoadSnapshot:
        with self._lock:
            return LoadSnapshot(self._in_flight, self._service_s, self._done, self._declined)
