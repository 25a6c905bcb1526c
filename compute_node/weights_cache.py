"""A round's weights, held once per node and named by digest (ComputeNode.put_weights).

Memory is the constraint: a node may hold no more than about three models at its peak
(the weights, training's copy, the delta). So the cache holds only the latest weights
it was given; older ones live on, weakly, while a task that took them still runs or
waits, and are gone the moment the last one ends. One job's rounds thus never hold
two rounds' weights at once, and a second job on the same node (or a second
coordinator) still finds its weights while any of its tasks is here; when none is,
it answers WeightsMissing and the coordinator sends them again.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np


class RoundWeights(list):
    """One round's weights [w1, b1, w2, b2] as read-only arrays (a list that takes weakrefs)."""


class WeightsCache:
    """Thread-safe digest -> RoundWeights: the latest strongly, older ones while in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)
        self._latest: RoundWeights | None = None
        self._by_digest: weakref.WeakValueDictionary[str, RoundWeights] = (
            weakref.WeakValueDictionary()
        )

    def put(self, digest: str, arrays: Sequence[np.ndarray]) -> RoundWeights:
        """Hold `arrays` as the latest weights under `digest` (kept if already held)."""
        with self._lock:
            held = self._by_digest.get(digest)
            if held is None:
                held = RoundWeights(arrays)
                self._by_digest[digest] = held
            self._latest = held  # the previous latest now lives only as long as its tasks
            self._stored.notify_all()
            return held

    def get(self, digest: str) -> RoundWeights | None:
        """The weights under `digest`, or None when the node does not hold them."""
        with self._lock:
            return self._by_digest.get(digest)

    def wait_for(self, digest: str, timeout_s: float) -> RoundWeights | None:
        """The weights under `digest`, waiting up to `timeout_s` for them to be put; else None."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                held = self._by_digest.get(digest)
                left = deadline - time.monotonic()
                if held is not None or left <= 0:
                    return held
                self._stored.wait(left)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_digest)
