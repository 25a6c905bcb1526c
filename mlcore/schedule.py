"""What each round uses besides the weights: the nodes' learning rate and the shards sampled.

Both are pure functions of the run's settings and the round number (1-based), so a resumed
run asks round r for exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("constant", "step", "cosine")
# Keeps the sample's random stream apart from every other use of the run's seed.
_SAMPLE_STREAM = 0x53414D50  # "SAMP"


@dataclass(frozen=True)
class LrSchedule:
    """The nodes' eta per round: constant; step (times gamma every step_rounds); cosine."""

    kind: str = "constant"
    step_rounds: int = 10
    gamma: float = 0.5
    lr_min: float = 0.0

    def eta(self, eta: float, round_no: int, rounds: int) -> float:
        """The learning rate of round `round_no` of `rounds` for a run whose ETA is `eta`.

        constant: eta. step: eta * gamma ** ((round - 1) // step_rounds).
        cosine: lr_min + (eta - lr_min) * (1 + cos(pi * (round - 1) / rounds)) / 2, which
        starts at eta and ends one step short of lr_min (so it stays > 0 with lr_min 0).
        """
        if not 1 <= round_no <= rounds:
            raise ValueError(f"round must be in 1..{rounds}, got {round_no}")
        if self.kind == "constant":
            return eta
        if self.kind == "step":
            return eta * self.gamma ** ((round_no - 1) // self.step_rounds)
        if self.kind == "cosine":
            cos = math.cos(math.pi * (round_no - 1) / rounds)
            return self.lr_min + (eta - self.lr_min) * (1.0 + cos) / 2.0
        raise ValueError(f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULES)}")

    def check(self, eta: float, rounds: int) -> None:
        """ValueError unless every round's eta is > 0 and finite (a step schedule can underflow)."""
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of "
                             f"{', '.join(SCHEDULES)}")
        if self.kind == "cosine" and not 0.0 <= self.lr_min < eta:
            raise ValueError(f"the cosine schedule's minimum {self.lr_min!r} must be in "
                             f"[0, ETA = {eta!r})")
        last = self.eta(eta, rounds, rounds)  # the smallest of every schedule here
        if not (math.isfinite(last) and last > 0):
            raise ValueError(f"the {self.kind} schedule's learning rate in round {rounds} is "
                             f"{last!r}; it must stay > 0 (raise the gamma or the step)")

    def identity(self, rounds: int) -> dict[str, object]:
        """What determines the schedule's etas besides ETA ({} for constant: old runs match)."""
        if self.kind == "constant":
            return {}
        if self.kind == "step":
            return {"lr_schedule": "step", "lr_step_rounds": self.step_rounds,
                    "lr_gamma": self.gamma}
        return {"lr_schedule": "cosine", "lr_min": self.lr_min, "lr_rounds": rounds}


def sample_size(n_shards: int, fraction: float) -> int:
    """How many shards a round trains: fraction * n_shards rounded to nearest, at least 1."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(n_shards, round(fraction * n_shards)))


def sample_shards(n_shards: int, fraction: float, seed: int, round_no: int) -> list[int]:
    """The indices of the shards round `round_no` trains, ascending (shard order).

    All of them for fraction 1; otherwise sample_size of them drawn without replacement
    from a generator seeded with (seed, round_no): the same for every run with that seed.
    """
    m = sample_size(n_shards, fraction)
    if m == n_shards:
        return list(range(n_shards))
    rng = np.random.default_rng([seed, round_no, _SAMPLE_STREAM])
    return sorted(int(i) for i in rng.choice(n_shards, size=m, replace=False))
