"""Shards by content digest: a memory-bounded LRU over uploaded shards and a data-dir index.

A shard is named only by the sha256 of its bytes, so a server never opens a path a
caller chose: files are found by hashing what lies inside the configured data dir at
startup, and uploaded bytes are accepted only when they hash to their digest. The cache
is bounded in bytes (least recently used first out); a data-dir shard that falls out is
simply read again, an uploaded one is asked for again, so eviction never fails a job.

The coordinator and the node share this store and differ only in its parameters: the
coordinator keeps the bytes as uploaded (to forward them) and refuses a shard larger than
its whole cache; a node keeps each shard decoded for training (`decode`, `size`) and keeps
the newest shard even alone over the bound, since the task about to use it would only ask
for it again.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from runtime.events import log_event

V = TypeVar("V")

DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Files larger than this are not indexed (nor read): no shard is that big, and a
# stray huge file must not make startup crawl.
MAX_INDEXED_FILE_BYTES = 1 << 30


class ShardError(ValueError):
    """Bytes that do not hash to their digest, a malformed digest, or a shard over the cache."""


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return the digest if it is 64 lowercase hex characters (a sha256); ShardError otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ShardError(f"digest must be 64 lowercase hex characters (sha256), got {digest!r}")
    return digest


def index_data_dir(root: Path) -> dict[str, Path]:
    """Map sha256 → path for every regular file inside `root` (symlinks leading out are skipped)."""
    root = root.resolve()
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        try:
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                continue
            if any(part.startswith(".") for part in real.relative_to(root).parts):
                continue
            if real.stat().st_size > MAX_INDEXED_FILE_BYTES:
                continue
            index.setdefault(sha256_hex(real.read_bytes()), real)
        except OSError as exc:
            log_event("data_dir_skip", path=str(path), reason=exc)
    return index


def _as_bytes(data: bytes, name: str) -> Any:
    return data


class ShardStore(Generic[V]):
    """Thread-safe digest → shard lookup over uploaded shards and an optional data dir.

    `decode(data, name)` turns a shard's bytes into what is kept (default: the bytes);
    `size(value)` is what a kept shard counts against `max_bytes` (default: len).
    `refuse_oversize` makes a shard larger than the whole cache a ShardError (the
    coordinator's choice) instead of being kept alone over the bound (the node's).
    `kind` names what is kept ("model": the same store holds model files by digest).
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        data_dir: Path | None = None,
        decode: Callable[[bytes, str], V] = _as_bytes,
        size: Callable[[V], int] = len,  # type: ignore[assignment]
        refuse_oversize: bool = False,
        owner: str = "this server",
        kind: str = "shard",
    ) -> None:
        self._max_bytes = max_bytes
        self._kind = kind  # what the store holds, in messages and events (models too)
        self._decode = decode
        self._size = size
        self._refuse_oversize = refuse_oversize
        self._owner = owner
        self._cache: OrderedDict[str, V] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        # One decode at a time: parsing holds the GIL anyway, and its temporaries (the text, its
        # lines, an int64 table: ~15x the shard's compact size) would otherwise pile up when a
        # coordinator uploads many shards at once (measured: 8 parallel 2.3 MB uploads took a
        # node from 77 MB to 250 MB peak RSS).
        self._decode_lock = threading.Lock()
        self._files = index_data_dir(data_dir) if data_dir is not None else {}

    @property
    def n_indexed(self) -> int:
        return len(self._files)

    def __len__(self) -> int:
        """Shards held in the cache."""
        with self._lock:
            return len(self._cache)

    def n_available(self) -> int:
        """Distinct shards held without an upload: cached or in the data dir."""
        with self._lock:
            return len(self._files.keys() | self._cache.keys())

    def items(self) -> list[tuple[str, V]]:
        """(digest, value) of the cached entries, least recently used first (no reordering)."""
        with self._lock:
            return list(self._cache.items())

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests neither cached nor in the data dir, in the order given, each once."""
        with self._lock:
            cache, files = self._cache, self._files
            return [d for d in dict.fromkeys(digests) if d not in cache and d not in files]

    def put(self, digest: str, data: bytes | memoryview) -> V:
        """Check `data` hashes to `digest`, decode it (its own errors pass through), keep it."""
        check_digest(digest)
        actual = sha256_hex(data)
        if actual != digest:
            raise ShardError(
                f"{self._kind} bytes hash to {actual}, not to the digest sent ({digest}); "
                "send the file's exact bytes again"
            )
        if self._refuse_oversize and len(data) > self._max_bytes:
            raise ShardError(
                f"{self._kind} of {len(data)} bytes exceeds {self._owner}'s {self._kind} cache "
                f"({self._max_bytes} bytes)"
            )
        with self._lock:
            held = self._cache.get(digest)
            if held is not None:
                self._cache.move_to_end(digest)
                return held
        with self._decode_lock:
            if not isinstance(data, bytes):
                data = bytes(data)  # a view of the received frame (idl.protocol): keep a copy
            value = self._decode(data, f"{self._kind} {digest[:12]}")
        self._insert(digest, value)
        return value

    def get(self, digest: str) -> V | None:
        """The shard, from the cache or the data dir; None when it is held nowhere."""
        with self._lock:
            value = self._cache.get(digest)
            if value is not None:
                self._cache.move_to_end(digest)
                return value
            path = self._files.get(digest)
        if path is None:
            return None
        return self._load_file(digest, path)

    def _load_file(self, digest: str, path: Path) -> V | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log_event("data_dir_unreadable", path=str(path), reason=exc)
            data = b""
        if sha256_hex(data) != digest:
            # Changed or removed since startup: it is no longer the shard asked for.
            log_event("data_dir_changed", path=str(path), digest=digest[:12])
            with self._lock:
                self._files.pop(digest, None)
            return None
        with self._decode_lock:
            value = self._decode(data, path.name)
        self._insert(digest, value)
        return value

    def _insert(self, digest: str, value: V) -> None:
        with self._lock:
            old = self._cache.pop(digest, None)
            if old is not None:
                self._cached_bytes -= self._size(old)
            self._cache[digest] = value
            self._cached_bytes += self._size(value)
            # The newest shard always stays, even alone over the bound: evicting the
            # one a task is about to use would only make the caller send it again.
            while self._cached_bytes > self._max_bytes and len(self._cache) > 1:
                evicted, gone = self._cache.popitem(last=False)
                self._cached_bytes -= self._size(gone)
                log_event(f"{self._kind}_evicted", digest=evicted[:12])
