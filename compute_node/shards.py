"""Shards by content digest: a data-dir index plus a memory-bounded LRU of parsed shards.

A shard is named only by the sha256 of its bytes, so a node never opens a path a
caller chose: files are found by hashing what lies inside the configured data dir
at startup, and uploaded bytes are accepted only when they hash to their digest.
Parsed shards are cached (least recently used first out, bounded in bytes); a
data-dir shard that falls out is simply read again, an uploaded one is asked for again.
A cached shard keeps its integers in the smallest integer dtype that holds them (letters:
uint8 features, uint8 labels), an eighth of float64's size; a task widens them to float64
only while it trains (compute_node.trainer), and the values, hence the results, are the same.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcore.data import Dataset, parse_data
from runtime.events import log_event

_DIGEST = re.compile(r"[0-9a-f]{64}")
# Files larger than this are not indexed (nor read): no shard is that big, and a
# stray huge file must not make startup crawl.
MAX_INDEXED_FILE_BYTES = 1 << 30


# Smallest first: the first that holds a column's range exactly is used.
_COMPACT_DTYPES = tuple(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)
)


@dataclass(frozen=True)
class Shard:
    """A parsed shard as the node keeps it: x (n, d) and y (n,) in compact dtypes.

    x holds exactly the values mlcore.data.parse_data produced (integers), so widening it
    to float64 gives the very same array; x stays float64 when its values need that.
    """

    x: np.ndarray
    y: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)


def compact_shard(dataset: Dataset) -> Shard:
    """The dataset with x and y each in the smallest integer dtype holding all its values."""
    return Shard(x=_compact(dataset.x), y=_compact(dataset.y))


def _compact(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    lo, hi = values.min(), values.max()
    integral = values.dtype.kind in "iu" or bool(np.array_equal(values, np.trunc(values)))
    if integral:
        for dtype in _COMPACT_DTYPES:
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return np.ascontiguousarray(values, dtype=dtype)
    return values


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
    """Thread-safe digest → Shard lookup over uploaded shards and a data dir."""

    def __init__(self, max_cache_bytes: int, data_dir: Path | None = None) -> None:
        self._max_bytes = max_cache_bytes
        self._cache: OrderedDict[str, Shard] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        # One parse at a time: parsing holds the GIL anyway, and its temporaries (the text, its
        # lines, an int64 table: ~15x the shard's compact size) would otherwise pile up when a
        # coordinator uploads many shards at once (measured: 8 parallel 2.3 MB uploads took a
        # node from 77 MB to 250 MB peak RSS).
        self._parse_lock = threading.Lock()
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

    def put(self, digest: str, data: bytes | memoryview) -> Shard:
        """Check `data` hashes to `digest`, parse it strictly (DataError), and cache it."""
        check_digest(digest)
        actual = sha256_hex(data)
        if actual != digest:
            raise DigestMismatch(
                f"shard bytes hash to {actual}, not to the digest sent ({digest}); "
                "resend the file's exact bytes"
            )
        with self._parse_lock:
            if not isinstance(data, bytes):
                data = bytes(data)  # a view of the received frame (idl.rpc): parser wants bytes
            shard = compact_shard(parse_data(data, f"shard {digest[:12]}"))
        self._insert(digest, shard)
        return shard

    def get(self, digest: str) -> Shard | None:
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

    def _load_file(self, digest: str, path: Path) -> Shard | None:
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
        with self._parse_lock:
            shard = compact_shard(parse_data(data, path.name))
        self._insert(digest, shard)
        return shard

    def _insert(self, digest: str, shard: Shard) -> None:
        size = shard.nbytes
        with self._lock:
            old = self._cache.pop(digest, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
            self._cache[digest] = shard
            self._cached_bytes += size
            # The newest shard always stays, even alone over the bound: evicting the
            # one a task is about to use would only make the caller send it again.
            while self._cached_bytes > self._max_bytes and len(self._cache) > 1:
                evicted, gone = self._cache.popitem(last=False)
                self._cached_bytes -= gone.nbytes
                log_event("shard_evicted", digest=evicted[:12])
