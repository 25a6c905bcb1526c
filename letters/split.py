"""Convert one data file (UCI letter-first or numeric) into the seed's dataset layout."""

from __future__ import annotations

from pathlib import Path

from letters.layout import prepare_out_dir, shard_sizes, write_layout
from mlcore.data import read_data_file


def split_file(
    source: Path, out_dir: Path, n_shards: int, n_validate: int, *, overwrite: bool = False
) -> list[Path]:
    """Keep row order: the last n_validate rows validate, the rest fill the shards in order.

    Raises mlcore.data.DataError for a malformed source and ValueError for an impossible split.
    """
    data = read_data_file(source)
    sizes = shard_sizes(data.n_rows, n_shards, n_validate)
    prepare_out_dir(out_dir, overwrite)
    x = data.x.astype("int64")
    return write_layout(out_dir, [(x, data.y)], sizes, n_validate)
