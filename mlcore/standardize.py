"""Input standardisation: x' = (x - shift) * scale, with statistics from the training shards.

Raw letters attributes are integers 0..15 with very different spreads; a ReLU MLP trained by
SGD converges far faster on zero-mean, unit-variance inputs. The statistics come from the
training rows only (never the validation rows), are computed once by the client and sent to
every node, so each node applies the very same numbers. Sums run shard by shard in the given
order, so the statistics are bitwise reproducible for the same shards. Applying them is two
elementwise float64 operations in a fixed order (subtract, then multiply): the same bits on
every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Standardization", "fit_standardization", "standardize", "check_standardization"]


@dataclass(frozen=True)
class Standardization:
    """Per-feature shift (the mean) and scale (1 / standard deviation, 1 where it is 0)."""

    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @property
    def n_features(self) -> int:
        return len(self.shift)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """A new standardised float64 array; `x` itself is left untouched."""
        return standardize(x, self.shift, self.scale)

    def to_meta(self) -> dict[str, list[float]]:
        """JSON-ready form for model metadata (floats round-trip exactly through JSON)."""
        return {"feature_shift": list(self.shift), "feature_scale": list(self.scale)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Standardization:
        """Inverse of to_meta; ValueError if the entries are missing or malformed."""
        try:
            shift = [float(v) for v in meta["feature_shift"]]
            scale = [float(v) for v in meta["feature_scale"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model metadata holds no valid standardisation ({exc})") from None
        check_standardization(shift, scale, len(shift))
        return cls(tuple(shift), tuple(scale))


def fit_standardization(shards: Sequence[np.ndarray]) -> Standardization:
    """Mean and 1/std (population) per feature over all rows of `shards`, in shard order.

    Two passes (mean, then squared deviations) for accuracy; a constant feature gets
    scale 1 so it maps to 0 instead of dividing by zero.
    """
    if not shards:
        raise ValueError("standardisation needs at least one training shard")
    arrays = [np.asarray(s, dtype=np.float64) for s in shards]
    d = arrays[0].shape[1] if arrays[0].ndim == 2 else -1
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != d or a.shape[0] < 1:
            raise ValueError(
                f"shard {i}: expected a non-empty (n, {d}) array, got shape {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"shard {i}: contains NaN or infinite values")
    n = sum(a.shape[0] for a in arrays)
    total = np.zeros(d)
    for a in arrays:
        total += a.sum(axis=0)
    mean = total / n
    squares = np.zeros(d)
    for a in arrays:
        squares += ((a - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / n)
    scale = np.ones(d)
    np.divide(1.0, std, out=scale, where=std > 0)
    return Standardization(tuple(float(v) for v in mean), tuple(float(v) for v in scale))


def check_standardization(shift: Sequence[float], scale: Sequence[float], d: int) -> None:
    """ValueError naming the problem unless both have exactly d finite entries."""
    for name, values in (("feature_shift", shift), ("feature_scale", scale)):
        if len(values) != d:
            raise ValueError(f"{name} has {len(values)} values, the data has d = {d} features")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"{name}[{bad[0]}] is {values[bad[0]]}, must be finite")


def standardize(x: np.ndarray, shift: Sequence[float], scale: Sequence[float]) -> np.ndarray:
    """(x - shift) * scale as a new C-contiguous float64 array; checks lengths and values."""
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 2:
        raise ValueError(f"x must be a 2-D array (n, d), got shape {xs.shape}")
    check_standardization(shift, scale, xs.shape[1])
    out = np.subtract(xs, np.asarray(shift, dtype=np.float64))
    out *= np.asarray(scale, dtype=np.float64)
    return np.ascontiguousarray(out)
