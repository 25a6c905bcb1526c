"""Convert one data file (UCI letter-first or numeric) into the seed's dataset layout."""

from __future__ import annotations

from pathlib import Path

from letters.layout import prepare_out_dir, write_layout
from letters.partition import EQUAL, SizeSpec, plan_shards, write_assigned
from mlcore.data import read_data_file


def split_file(
    source: Path, out_dir: Path, n_shards: int, n_validate: int, *, overwrite: bool = False,
    dirichlet: float | None = None, sizes: SizeSpec = EQUAL, seed: int = 1,
) -> list[Path]:
    """Keep row order: the last n_validate rows validate, the rest fill the shards in order.

    `dirichlet` and `sizes` skew the training shards, drawn from `seed` (letters.partition);
    the validation rows stay the last n_validate rows whatever they are.
    Raises mlcore.data.DataError for a malformed source and ValueError for an impossible split.
    """
    data = read_data_file(source)
    n_train = data.n_rows - n_validate
    labels = data.y[: max(n_train, 0)] if dirichlet is not None else None
    plan = plan_shards(data.n_rows, n_shards, n_validate, alpha=dirichlet, sizes=sizes,
                       seed=seed, train_labels=labels)
    prepare_out_dir(out_dir, overwrite)
    x = data.x.astype("int64")
    if plan.assignment is not None:
        return write_assigned(out_dir, [(x, data.y)], plan.assignment, n_shards, n_validate)
    return write_layout(out_dir, [(x, data.y)], plan.sizes, n_validate)
