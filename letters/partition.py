"""Non-IID shards: label skew (a Dirichlet split per class) and quantity skew (shard sizes).

Both `letters split` and `letters generate` use it. The validation rows (the last
`n_validate`) are never touched: they stay the same IID held-out rows with or without skew.

**Shard sizes** (`--shard-sizes`): `equal` (the default: the seed's layout, the first shards
one row more when the rows do not divide evenly), `lognormal:SIGMA` (relative sizes
exp(N(0, SIGMA^2)), one draw per shard from the seed) or explicit relative sizes `W1,...,WN`
(one positive number per shard, e.g. `4,2,1,1`). Relative sizes become row counts by the
largest remainder (ties to the lower shard); a shard rounded to 0 rows takes one from the
largest. Without `--dirichlet` the training rows are then cut in order, as today, into shards
of those sizes: the data's own order is random, so the shards stay IID in their labels.

**Label skew** (`--dirichlet ALPHA`): the standard recipe (Hsu et al. 2019; Flower Datasets'
DirichletPartitioner): for every class c, in ascending order, its training rows are shuffled
and shard k receives the share p[c, k] of them, p[c] ~ Dirichlet(ALPHA * N * w), where w are
the relative shard sizes above (1/N each by default, which makes it Dirichlet(ALPHA, ...,
ALPHA)). The cut points are rint(cumsum(p[c]) * n_c). So the *expected* size of shard k is
w_k of the rows; the realised sizes vary, the more so the smaller ALPHA (at 0.1 a shard holds
mostly 2-4 classes; at 100 it is close to IID). Every shard is non-empty: one left with no
rows takes one row from the largest shard (its last row in file order; the lowest-numbered
shard first, repeated until none is empty), deterministically, with no redraw. Rows keep
their file order inside each shard.

All draws come from one generator seeded by the command's seed alone (`partition_rng`),
sizes first, then per class its Dirichlet proportions and its shuffle; the data's content
never changes, only where each training row goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letters.layout import TRAIN_NAME, VALIDATE_NAME, format_rows, shard_sizes

# Mixed into the seed so the partition's draws never coincide with the generator's blocks.
_PARTITION_KEY = 0x6E6F6E2D696964  # "non-iid"


@dataclass(frozen=True)
class SizeSpec:
    """How big the shards are relative to each other (see the module's docstring)."""

    kind: str = "equal"  # equal | lognormal | weights
    sigma: float = 0.0
    weights: tuple[float, ...] = ()

    @property
    def is_equal(self) -> bool:
        return self.kind == "equal"

    def __str__(self) -> str:
        if self.kind == "lognormal":
            return f"lognormal:{self.sigma:g}"
        if self.kind == "weights":
            return ",".join(f"{w:g}" for w in self.weights)
        return "equal"


EQUAL = SizeSpec()


def parse_size_spec(text: str) -> SizeSpec:
    """`equal`, `lognormal:SIGMA` or `W1,W2,...`; ValueError saying what is wrong."""
    value = text.strip()
    if value.lower() == "equal":
        return EQUAL
    if value.lower().startswith("lognormal:"):
        sigma = _finite(value.split(":", 1)[1], "SIGMA")
        if sigma < 0:
            raise ValueError(f"lognormal SIGMA must be >= 0, got {sigma:g}")
        return SizeSpec("lognormal", sigma=sigma)
    parts = [p.strip() for p in value.split(",")]
    if not value or not all(parts):
        raise ValueError(f"expected equal, lognormal:SIGMA or W1,W2,..., got {text!r}")
    weights = tuple(_finite(p, "relative size") for p in parts)
    if any(w <= 0 for w in weights):
        raise ValueError(f"relative sizes must be > 0, got {text!r}")
    return SizeSpec("weights", weights=weights)


def _finite(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {text.strip()!r}")
    return number


def partition_rng(seed: int) -> np.random.Generator:
    """The generator every partition draw of a run seeded with `seed` comes from."""
    return np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), _PARTITION_KEY]))


def relative_sizes(spec: SizeSpec, n_shards: int, rng: np.random.Generator) -> np.ndarray:
    """The shards' relative sizes w (summing to 1); lognormal draws n_shards values from rng."""
    if spec.kind == "weights":
        if len(spec.weights) != n_shards:
            raise ValueError(
                f"--shard-sizes names {len(spec.weights)} relative sizes for {n_shards} shards"
            )
        w = np.asarray(spec.weights, dtype=np.float64)
    elif spec.kind == "lognormal":
        w = rng.lognormal(0.0, spec.sigma, n_shards)
    else:
        w = np.ones(n_shards)
    return w / w.sum()


def sizes_from_weights(n_train: int, weights: np.ndarray) -> list[int]:
    """Row counts proportional to `weights`: largest remainder, then no shard below 1 row."""
    n_shards = len(weights)
    if n_train < n_shards:
        raise ValueError(f"{n_train} training rows are not enough for {n_shards} shards "
                         "(need at least one row each)")
    exact = n_train * np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    sizes = np.floor(exact).astype(np.int64)
    short = n_train - int(sizes.sum())
    order = np.lexsort((np.arange(n_shards), -(exact - sizes)))  # largest remainder first
    sizes[order[:short]] += 1
    while sizes.min() == 0:
        sizes[int(np.argmax(sizes))] -= 1
        sizes[int(np.argmin(sizes))] += 1
    return [int(s) for s in sizes]


def dirichlet_assignment(y: np.ndarray, n_shards: int, alpha: float, weights: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """The shard (0-based) of every training row: a Dirichlet(alpha * N * w) split per class."""
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"--dirichlet ALPHA must be a finite number > 0, got {alpha}")
    if len(y) < n_shards:
        raise ValueError(f"{len(y)} training rows are not enough for {n_shards} shards "
                         "(need at least one row each)")
    shard = np.empty(len(y), dtype=np.int64)
    concentration = alpha * n_shards * np.asarray(weights, dtype=np.float64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        p = rng.dirichlet(concentration)
        rows = rows[rng.permutation(len(rows))]
        cuts = np.rint(np.cumsum(p) / p.sum() * len(rows)).astype(np.int64)
        cuts[-1] = len(rows)
        counts = np.diff(cuts, prepend=0)
        shard[rows] = np.repeat(np.arange(n_shards), counts)
    _fill_empty_shards(shard, n_shards)
    return shard


def _fill_empty_shards(shard: np.ndarray, n_shards: int) -> None:
    """An empty shard (lowest number first) takes the last row, in file order, of the largest."""
    counts = np.bincount(shard, minlength=n_shards)
    while counts.min() == 0:
        empty = int(np.argmin(counts))
        donor = int(np.argmax(counts))
        row = int(np.flatnonzero(shard == donor)[-1])
        shard[row] = empty
        counts[donor] -= 1
        counts[empty] += 1


@dataclass(frozen=True)
class Plan:
    """Where the training rows go: contiguous `sizes` (assignment None), or per row."""

    sizes: list[int]
    assignment: np.ndarray | None = None


def plan_shards(n_rows: int, n_shards: int, n_validate: int, *, alpha: float | None = None,
                sizes: SizeSpec = EQUAL, seed: int = 1,
                train_labels: np.ndarray | None = None) -> Plan:
    """The partition of the first n_rows - n_validate rows (train_labels needed with alpha)."""
    equal = shard_sizes(n_rows, n_shards, n_validate)  # checks the split is possible
    if alpha is None and sizes.is_equal:
        return Plan(equal)
    rng = partition_rng(seed)
    weights = relative_sizes(sizes, n_shards, rng)
    n_train = n_rows - n_validate
    if alpha is None:
        return Plan(equal if sizes.is_equal else sizes_from_weights(n_train, weights))
    if train_labels is None or len(train_labels) != n_train:
        raise ValueError("a Dirichlet split needs the label of every training row")
    assignment = dirichlet_assignment(np.asarray(train_labels), n_shards, alpha, weights, rng)
    counts = np.bincount(assignment, minlength=n_shards)
    return Plan([int(c) for c in counts], assignment)


def write_assigned(out_dir: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                   assignment: np.ndarray, n_shards: int, n_validate: int) -> list[Path]:
    """Stream (x, y) chunks: training row i into shard assignment[i] (file order kept inside
    each shard), the n_validate rows after them into the validation file."""
    paths = [out_dir / TRAIN_NAME.format(k + 1) for k in range(n_shards)]
    validate = out_dir / VALIDATE_NAME
    for path in [*paths, validate]:
        path.write_bytes(b"")
    n_train = len(assignment)
    offset = 0
    for x, y in chunks:
        m = len(y)
        cut = min(max(n_train - offset, 0), m)
        if cut:
            where = assignment[offset : offset + cut]
            order = np.argsort(where, kind="stable")
            bounds = np.searchsorted(where[order], np.arange(n_shards + 1))
            for k in range(n_shards):
                take = order[bounds[k] : bounds[k + 1]]
                if len(take):
                    with paths[k].open("a", encoding="ascii", newline="\n") as fh:
                        fh.write(format_rows(x[take], y[take]))
        if cut < m:
            with validate.open("a", encoding="ascii", newline="\n") as fh:
                fh.write(format_rows(x[cut:], y[cut:]))
        offset += m
    if offset != n_train + n_validate:
        raise ValueError(f"expected {n_train + n_validate} rows, got {offset}")
    return [*paths, validate]


def label_entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a label histogram; 0 for an empty one."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())
