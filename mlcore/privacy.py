"""Differential privacy at the aggregator: clip every update, add Gaussian noise to their sum.

The Gaussian mechanism of DP-FedAvg (McMahan et al. 2018) with a fixed denominator:

    mean = (sum_i clip(delta_i, C) + N(0, (z * C)**2 I)) / m

clip(delta, C) scales the whole update (all tensors together) to L2 norm at most C; m is
the number of updates in the round (fixed by the sample size, never by the data); every
update counts once, whatever its sample count, so adding or removing one shard's update
moves the sum by at most C in L2 norm and the noise's standard deviation is z times that
sensitivity. The noise is drawn tensor by tensor in wire order from a generator seeded with
(seed, round), so a run is reproducible and a resumed run draws the same noise.

What this gives is one Gaussian-mechanism step per round, shard-level (a whole shard's
update is the unit protected), against whoever sees only the released weights; nothing
here accounts for privacy over many rounds (no accountant: no epsilon is computed or
claimed), and the aggregator itself sees every raw update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlcore.model import Params
from mlcore.strategies import Update, mean_delta

# Keeps the noise's random stream apart from every other use of the seed.
_NOISE_STREAM = 0x4E4F4953  # "NOIS"


def l2_norm(delta: Params) -> float:
    """The L2 norm of all the tensors together (sums in wire order, no BLAS)."""
    return math.sqrt(sum(float(np.sum(t * t)) for t in delta.tensors()))


def clip_update(delta: Params, clip: float) -> Params:
    """delta scaled by min(1, clip / ||delta||): its L2 norm over all tensors is at most clip."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clipping norm must be > 0 and finite, got {clip!r}")
    norm = l2_norm(delta)
    if norm <= clip:
        return delta
    factor = clip / norm
    return Params.from_tensors([t * factor for t in delta.tensors()])


def gaussian_noise(like: Params, std: float, seed: int, round_no: int) -> Params:
    """N(0, std**2) per coordinate, shaped like `like`, from a (seed, round) generator."""
    rng = np.random.default_rng([seed, round_no, _NOISE_STREAM])
    return Params.from_tensors([rng.normal(0.0, std, size=t.shape) for t in like.tensors()])


def private_mean(params: Params, updates: Sequence[Update], *, clip: float,
                 noise_multiplier: float, seed: int, round_no: int) -> Params:
    """(sum of clipped deltas, in shard order, + N(0, (noise_multiplier*clip)**2)) / m."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise multiplier must be >= 0 and finite, got {noise_multiplier!r}")
    mean_delta(params, updates)  # the same checks as FedAvg: counts, shapes, finite values
    clipped = [clip_update(delta, clip) for delta, _ in updates]
    total = [np.zeros(t.shape) for t in params.tensors()]
    for delta in clipped:
        for acc, t in zip(total, delta.tensors(), strict=True):
            acc += t
    if noise_multiplier > 0:
        noise = gaussian_noise(params, noise_multiplier * clip, seed, round_no)
        for acc, t in zip(total, noise.tensors(), strict=True):
            acc += t
    m = float(len(updates))
    return Params.from_tensors([acc / m for acc in total])
