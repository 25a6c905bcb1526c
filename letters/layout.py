"""The seed's dataset layout: train_letters1..N.txt, then validate_letters.txt.

Rows are numeric CSV, 16 integer attributes then the integer label (A=0 .. Z=25). A stream of
rows is laid out in order: the first rows fill train_letters1.txt, ..., the last `n_validate`
rows form validate_letters.txt. When the training rows do not divide evenly, the first
(n_train mod n_shards) shards get one row more, so shard sizes differ by at most one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TRAIN_NAME = "train_letters{}.txt"
VALIDATE_NAME = "validate_letters.txt"
_TOKENS = [str(i) for i in range(256)]


def shard_sizes(n_rows: int, n_shards: int, n_validate: int) -> list[int]:
    """Row counts of the training shards; raises ValueError if the split is impossible."""
    if n_shards < 1:
        raise ValueError(f"need at least 1 shard, got {n_shards}")
    if n_validate < 1:
        raise ValueError(f"need at least 1 validation row, got {n_validate}")
    n_train = n_rows - n_validate
    if n_train < n_shards:
        raise ValueError(
            f"{n_rows} rows leave {max(n_train, 0)} training rows after {n_validate} "
            f"validation rows: not enough for {n_shards} shards (need at least one row each)"
        )
    base, extra = divmod(n_train, n_shards)
    return [base + 1 if i < extra else base for i in range(n_shards)]


def format_rows(x: np.ndarray, y: np.ndarray) -> str:
    """Rows 'f1,...,fd,label\\n' for int arrays (fast path for small non-negative ints)."""
    table = np.column_stack([x, y]).astype(np.int64)
    if table.size and (table.min() < 0 or table.max() >= len(_TOKENS)):
        return "".join(",".join(map(str, row)) + "\n" for row in table.tolist())
    tok = _TOKENS
    return "".join(",".join([tok[v] for v in row]) + "\n" for row in table.tolist())


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create out_dir; refuse to mix with an existing dataset unless overwrite removes it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted([*out_dir.glob("train_*.txt"), *out_dir.glob("validate_*.txt")])
    if old and not overwrite:
        raise ValueError(
            f"{out_dir} already holds a dataset ({old[0].name} ...); "
            "choose an empty directory or pass --overwrite"
        )
    for p in old:
        p.unlink()


def write_layout(
    out_dir: Path,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    sizes: list[int],
    n_validate: int,
    *,
    progress: bool = False,
) -> list[Path]:
    """Stream (x, y) chunks into the shards then the validation file; return the paths."""
    targets = [(out_dir / TRAIN_NAME.format(i + 1), n) for i, n in enumerate(sizes)]
    targets.append((out_dir / VALIDATE_NAME, n_validate))
    total = sum(n for _, n in targets)
    done = 0
    it = iter(chunks)
    pending_x = np.zeros((0, 0), dtype=np.int64)
    pending_y = np.zeros(0, dtype=np.int64)
    for path, need in targets:
        with path.open("w", encoding="ascii", newline="\n") as fh:
            while need > 0:
                if len(pending_y) == 0:
                    pending_x, pending_y = next(it)
                take = min(need, len(pending_y))
                fh.write(format_rows(pending_x[:take], pending_y[:take]))
                pending_x, pending_y = pending_x[take:], pending_y[take:]
                need -= take
                done += take
                if progress:
                    _progress(done, total)
    if progress:
        sys.stderr.write("\n")
    return [p for p, _ in targets]


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done:,}/{total:,} rows ({100 * done // max(total, 1)}%)")
    sys.stderr.flush()
