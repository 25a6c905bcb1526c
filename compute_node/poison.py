"""Poisoned updates, for tests and experiments: a node that lies about what it learnt.

`python -m compute_node PORT P --poison MODE` makes a node train every task as usual and
then return a poisoned delta instead of the true one:

- `sign-flip`: the delta negated (the update pushes the model back up the loss);
- `scale`: the delta multiplied by 100 (one update outweighs every honest one in FedAvg);
- `noise`: the delta replaced by Gaussian noise with the same L2 norm (over all four
  tensors together), so a check on update norms cannot tell it from an honest one.

The result is garbage but finite and of the right shapes: it passes every check the
client makes on a task's result (finite values, the model's shapes), which is the point.
A client that only checks such things accepts it, and FedAvg follows it wherever it
points; only a robust aggregation (median, trimmed mean, Krum) can leave it out. This is
how the README's robust-aggregation figures are measured (scripts/experiment_robust.py),
so the poisoning is reproducible: `noise` is seeded from the node's --seed and the task's
identity (the shard's digest and the weights it was trained from), never from a clock,
the job id or the order tasks arrive in. The same node seed and the same task give the
same noise on any run; training is deterministic, so the other two modes are too.

Pure functions on numpy arrays; the node applies them to a trained task's delta
(compute_node.node) before it is sent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("sign-flip", "scale", "noise")
SCALE_FACTOR = 100.0


def l2_norm(tensors: Sequence[np.ndarray]) -> float:
    """The L2 norm of all tensors' values together, computed without overflowing.

    Each tensor's values are divided by the largest magnitude of all before squaring, so
    a delta whose squares would overflow float64 still has a finite norm; the summation
    order is fixed (tensor by tensor, numpy's pairwise sum within one), so the result is
    the same bits on every run.
    """
    biggest = max((float(np.max(np.abs(a))) for a in tensors if a.size), default=0.0)
    if biggest == 0.0 or not math.isfinite(biggest):
        return biggest
    squares = math.fsum(float(np.sum(np.square(a / biggest))) for a in tensors if a.size)
    return biggest * math.sqrt(squares)


def poison(delta: Sequence[np.ndarray], mode: str, seed: int = 0) -> list[np.ndarray]:
    """The poisoned version of `delta` (tensors in the model's order), as new float64 arrays.

    `sign-flip` is exactly -delta and `scale` exactly 100 * delta (one correctly rounded
    multiplication per value). `noise` draws standard normal values from
    numpy.random.default_rng(seed) tensor by tensor, in order, and scales them so that
    their L2 norm over all tensors equals the delta's (a zero delta stays zero). `delta`
    itself is left untouched.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in delta]
    if mode == "sign-flip":
        return [np.negative(a) for a in arrays]
    if mode == "scale":
        return [np.multiply(a, SCALE_FACTOR) for a in arrays]
    if mode == "noise":
        rng = np.random.default_rng(seed)
        noise = [rng.standard_normal(a.shape) for a in arrays]
        target, drawn = l2_norm(arrays), l2_norm(noise)
        if target == 0.0 or drawn == 0.0:
            return [np.zeros_like(a) for a in arrays]
        factor = target / drawn
        return [np.multiply(n, factor) for n in noise]
    raise ValueError(f"poison mode must be one of {', '.join(MODES)}, got {mode!r}")


def task_seed(node_seed: int, shard_digest: str, weights: Sequence[np.ndarray]) -> int:
    """The noise seed of one task: the node's seed, the shard, and the weights trained from.

    sha256 over all three, so two tasks differ in their noise as soon as they differ in
    shard or round (weights), and a task run again (a retry, a resumed run, another run
    with the same settings) gets the same noise.
    """
    h = hashlib.sha256(f"fedcluster-poison:{node_seed}:{shard_digest}".encode())
    for a in weights:
        array = np.ascontiguousarray(a, dtype=np.float64)
        h.update(repr(array.shape).encode())
        h.update(array.data.cast("B"))
    return int.from_bytes(h.digest(), "big")


@dataclass(frozen=True)
class Poisoner:
    """A node's poisoning: its mode and the node's seed (compute_node --poison, --seed)."""

    mode: str
    node_seed: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"poison mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def apply(
        self, delta: Sequence[np.ndarray], shard_digest: str, weights: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """The poisoned delta of the task that trained `shard_digest` from `weights`."""
        seed = task_seed(self.node_seed, shard_digest, weights) if self.mode == "noise" else 0
        return poison(delta, self.mode, seed)
