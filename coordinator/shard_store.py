"""Shard bytes by content digest, as the client uploaded them, for forwarding to nodes.

Bounded (least recently used first out): an evicted shard is simply reported missing
again and the client uploads it again, so eviction never fails a job.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

DIGEST = re.compile(r"[0-9a-f]{64}")


class ShardError(ValueError):
    """Bytes that do not match their digest, or a malformed digest."""


def check_digest(digest: str) -> None:
    """ShardError unless `digest` is 64 lowercase hex characters (a sha256)."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ShardError(f"digest must be 64 lowercase hex characters (sha256), got {digest!r}")


class ShardStore:
    """Thread-safe LRU map digest -> bytes, bounded by total size."""

    def __init__(self, max_bytes: int = 1024 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, digest: str, data: bytes) -> None:
        """Store `data` under `digest` after checking sha256(data) == digest."""
        check_digest(digest)
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ShardError(
                f"shard bytes hash to {actual}, not the digest given ({digest}); "
                "re-read the file and upload again"
            )
        if len(data) > self._max_bytes:
            raise ShardError(
                f"shard of {len(data)} bytes exceeds the coordinator's shard cache "
                f"({self._max_bytes} bytes)"
            )
        with self._lock:
            if digest in self._data:
                self._data.move_to_end(digest)
                return
            self._data[digest] = bytes(data)
            self._size += len(data)
            while self._size > self._max_bytes:
                _, evicted = self._data.popitem(last=False)
                self._size -= len(evicted)

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._data.get(digest)
            if data is not None:
                self._data.move_to_end(digest)
            return data

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests not held, in the order given, without duplicates."""
        with self._lock:
            out: list[str] = []
            for d in digests:
                if d not in self._data and d not in out:
                    out.append(d)
            return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
