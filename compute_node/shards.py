"""Shards by content digest: a data-dir index plus a memory-bounded LRU of parsed shards.

A shard is named only by the sha256 of its bytes, so a node never opens a path a
caller chose: files are found by hashing what lies inside the configured data dir
at startup, and uploaded bytes are accepted only when they hash to their digest.
Parsed shards are cached (least recently used first out, bounded in bytes); a
data-dir shard that falls out is simply read again, an uploaded one is asked for again.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from pathlib import Path

from idl.events import log_event
from mlcore.data import Dataset, parse_data

_DIGEST = re.compile(r"[0-9a-f]{64}")
# Files larger than this are not indexed (nor read): no shard is that big, and a
# stray huge file must not make startup crawl.
MAX_INDEXED_FILE_BYTES = 1 << 30


class DigestMismatch(ValueError):
    """Bytes that do not hash to the digest they were sent with, or a malformed digest."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return the digest if it is 64 lowercase hex characters; DigestMismatch otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise DigestMismatch(f"digest must be 64 lowercase hex characters (sha256), got {digest!r}")
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


class ShardStore:
    """Thread-safe digest → Dataset lookup over uploaded shards and a data dir."""

    def __init__(self, max_cache_bytes: int, data_dir: Path | None = None) -> None:
        self._max_bytes = max_cache_bytes
        self._cache: OrderedDict[str, Dataset] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._files = index_data_dir(data_dir) if data_dir is not None else {}

    @property
    def n_indexed(self) -> int:
        return len(self._files)

    def n_available(self) -> int:
        """Distinct shards this node can train on without an upload."""
        with self._lock:
            return len(self._files.keys() | self._cache.keys())

    def missing(self, digests: list[str]) -> list[str]:
        """The digests that are neither cached nor in the data dir, in the order given."""
        with self._lock:
            return [d for d in digests if d not in self._cache and d not in self._files]

    def put(self, digest: str, data: bytes) -> Dataset:
        """Check `data` hashes to `digest`, parse it strictly (DataError), and cache it."""
        check_digest(digest)
        actual = sha256_hex(data)
        if actual != digest:
            raise DigestMismatch(
                f"shard bytes hash to {actual}, not to the digest sent ({digest}); "
                "resend the file's exact bytes"
            )
        dataset = parse_data(data, f"shard {digest[:12]}")
        self._insert(digest, dataset)
        return dataset

    def get(self, digest: str) -> Dataset | None:
        """The parsed shard, from the cache or the data dir; None when this node lacks it."""
        with self._lock:
            dataset = self._cache.get(digest)
            if dataset is not None:
                self._cache.move_to_end(digest)
                return dataset
            path = self._files.get(digest)
        if path is None:
            return None
        return self._load_file(digest, path)

    def _load_file(self, digest: str, path: Path) -> Dataset | None:
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
        dataset = parse_data(data, path.name)
        self._insert(digest, dataset)
        return dataset

    def _insert(self, digest: str, dataset: Dataset) -> None:
        size = dataset.x.nbytes + dataset.y.nbytes
        with self._lock:
            old = self._cache.pop(digest, None)
            if old is not None:
                self._cached_bytes -= old.x.nbytes + old.y.nbytes
            self._cache[digest] = dataset
            self._cached_bytes += size
            # The newest shard always stays, even alone over the bound: evicting the
            # one a task is about to use would only make the caller send it again.
            while self._cached_bytes > self._max_bytes and len(self._cache) > 1:
                evicted, ds = self._cache.popitem(last=False)
                self._cached_bytes -= ds.x.nbytes + ds.y.nbytes
                log_event("shard_evicted", digest=evicted[:12])
