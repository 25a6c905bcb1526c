"""The node's shards: parsed, compact, in the shared digest-keyed store (runtime.shard_store).

A cached shard keeps its integers in the smallest integer dtype that holds them (letters:
uint8 features, uint8 labels), an eighth of float64's size; a task widens them to float64
only while it trains (compute_node.trainer), and the values, hence the results, are the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcore.data import Dataset, Rows, parse_data
from runtime.shard_store import ShardStore

# Smallest first: the first that holds a column's range exactly is used.
_COMPACT_DTYPES = tuple(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)
)


class Shard(Rows):
    """A parsed shard as the node keeps it: x (n, d) and y (n,) in compact dtypes.

    x holds exactly the values mlcore.data.parse_data produced (integers), so widening it
    to float64 gives the very same array; x stays float64 when its values need that.
    """

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


def parse_shard(data: bytes, name: str) -> Shard:
    """Parse a shard's bytes strictly (DataError naming `name`) and keep them compact."""
    return compact_shard(parse_data(data, name))


def node_store(max_bytes: int, data_dir: Path | None = None) -> ShardStore[Shard]:
    """The node's shard store: parsed compact shards, from uploads and `data_dir`."""
    return ShardStore(max_bytes, data_dir=data_dir, decode=parse_shard, size=_nbytes)


def _nbytes(shard: Shard) -> int:
    return shard.nbytes
