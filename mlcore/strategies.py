"""Server strategies: how a round's updates become the next global weights, apart from networking.

Every strategy is a pure function of the global weights, the round's updates as
(delta, n_samples) pairs in shard order and, for the stateful ones, an explicit ServerState
(their momenta), which they return updated instead of keeping it anywhere. Sums run in shard
order with numpy's element-wise operations and reductions over a fixed axis (no BLAS), so a
strategy gives the same bits whatever order the updates arrived in over the network.

- `fedavg`: new = old + sum(n_i * delta_i) / sum(n_i) (mlcore.fedavg, unchanged).
- The server optimisers take that weighted mean as a pseudo-gradient D and step with it:
  `fedavgm` (Hsu et al. 2019): v = momentum * v + D; new = old + server_lr * v.
  `fedadam`, `fedyogi`, `fedadagrad` (Reddi et al. 2021, "Adaptive Federated Optimization",
  Algorithm 2, no bias correction; m starts at 0 and v at tau**2 as the paper's v_{-1}):
  m = beta1 * m + (1 - beta1) * D
  v = beta2 * v + (1 - beta2) * D**2                 (Adam)
  v = v - (1 - beta2) * D**2 * sign(v - D**2)        (Yogi)
  v = v + D**2                                       (Adagrad)
  new = old + server_lr * m / (sqrt(v) + tau)
- The robust ones treat every update alike, whatever its sample count: `median` and
  `trimmed-mean` (the mean of what is left after dropping floor(fraction * n) values from
  each end) coordinate by coordinate; `krum` / `multi-krum` (Blanchard et al. 2017) score each
  update by the summed squared distances to its n - f - 2 nearest others, keep the m best
  scores (m = 1 for Krum) and FedAvg the kept updates (sample-weighted, in shard order), so
  multi-krum with f = 0 and m = n is FedAvg.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mlcore.fedavg import fedavg
from mlcore.model import Params

Update = tuple[Params, int]

FEDOPT = ("fedadam", "fedyogi", "fedadagrad")
# Strategies whose aggregate is the sample-weighted mean of the deltas, followed by a server
# step: the ones a differentially private mean (mlcore.privacy) can stand in for.
MEAN_BASED = ("fedavg", "fedavgm", *FEDOPT)
ROBUST = ("median", "trimmed-mean", "krum", "multi-krum")
STRATEGIES = (*MEAN_BASED, *ROBUST)

# Which option each strategy reads (the client refuses the others).
USES: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedavgm": ("server_lr", "server_momentum"),
    "fedadam": ("server_lr", "beta1", "beta2", "tau"),
    "fedyogi": ("server_lr", "beta1", "beta2", "tau"),
    "fedadagrad": ("server_lr", "beta1", "tau"),
    "median": (),
    "trimmed-mean": ("trim_fraction",),
    "krum": ("krum_f",),
    "multi-krum": ("krum_f", "krum_m"),
}
# The slots of a stateful strategy's ServerState after its first round.
STATE_SLOTS: dict[str, tuple[str, ...]] = {"fedavgm": ("v",), **{k: ("m", "v") for k in FEDOPT}}
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01, "fedadagrad": 0.01}


@dataclass(frozen=True)
class StrategyOptions:
    """A strategy's settings; server_lr None means the strategy's own default."""

    server_lr: float | None = None
    server_momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    trim_fraction: float = 0.1
    krum_f: int = 0
    krum_m: int | None = None  # None: n - f

    def lr(self, name: str) -> float:
        """The server learning rate `name` uses."""
        return self.server_lr if self.server_lr is not None else DEFAULT_SERVER_LR[name]

    def used_by(self, name: str) -> dict[str, object]:
        """The settings `name` reads, defaults filled in: what a run's identity records."""
        out: dict[str, object] = {}
        for key in USES[name]:
            out[key] = self.lr(name) if key == "server_lr" else getattr(self, key)
        return out


@dataclass(frozen=True)
class ServerState:
    """A stateful strategy's memory between rounds: named slots of tensors shaped like Params."""

    slots: Mapping[str, Params] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat {"state_<slot>_<tensor>": array} for a checkpoint (bitwise round trip)."""
        names = ("w1", "b1", "w2", "b2")
        return {f"state_{slot}_{name}": tensor
                for slot, params in sorted(self.slots.items())
                for name, tensor in zip(names, params.tensors(), strict=True)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ServerState:
        """Read what to_arrays wrote (other keys ignored); ValueError if a slot is incomplete."""
        found: dict[str, dict[str, np.ndarray]] = {}
        for key, array in arrays.items():
            if key.startswith("state_"):
                slot, _, name = key[len("state_"):].rpartition("_")
                found.setdefault(slot, {})[name] = array
        slots = {}
        for slot, tensors in sorted(found.items()):
            missing = [n for n in ("w1", "b1", "w2", "b2") if n not in tensors]
            if not slot or missing:
                raise ValueError(f"strategy state slot {slot!r} is incomplete (missing "
                                 f"{', '.join(missing) or 'its name'})")
            slots[slot] = Params.from_tensors([tensors[n] for n in ("w1", "b1", "w2", "b2")])
        return cls(slots)


def mean_delta(params: Params, updates: Sequence[Update]) -> Params:
    """sum(n_i * delta_i) / sum(n_i), summed in the order given: FedAvg's step, alone."""
    zeros = Params.from_tensors([np.zeros_like(t) for t in params.tensors()])
    return fedavg(zeros, updates)


def _map(fn: Callable[..., np.ndarray], *many: Params) -> Params:
    """Params whose every tensor is fn of the matching tensors of `many`."""
    return Params.from_tensors([fn(*ts) for ts in zip(*(p.tensors() for p in many), strict=True)])


def _finite(params: Params, what: str) -> Params:
    for i, t in enumerate(params.tensors()):
        if not np.isfinite(t).all():
            raise ValueError(f"{what}: tensor {i} holds NaN or infinite values")
    return params


def _slot(state: ServerState, name: str, params: Params, fill: float) -> Params:
    """The state's slot `name`, or a fresh one filled with `fill` on the first round."""
    held = state.slots.get(name)
    if held is None:
        return _map(lambda t: np.full_like(t, fill), params)
    if [t.shape for t in held.tensors()] != [t.shape for t in params.tensors()]:
        raise ValueError(f"strategy state slot {name!r} has other shapes than the model")
    return held


# ------------------------------------------------------------------ server optimisers


def fedavgm_step(params: Params, mean: Params, state: ServerState, *, server_lr: float = 1.0,
                 momentum: float = 0.9) -> tuple[Params, ServerState]:
    """Server momentum on the round's mean delta: v = momentum*v + mean; new = old + lr*v."""
    v = _map(lambda v, d: momentum * v + d, _slot(state, "v", params, 0.0), mean)
    new = _map(lambda x, v: x + server_lr * v, params, v)
    return _finite(new, "fedavgm"), replace(state, slots={**state.slots, "v": v})


def fedopt_step(kind: str, params: Params, mean: Params, state: ServerState, *,
                server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                tau: float = 1e-3) -> tuple[Params, ServerState]:
    """One FedAdam / FedYogi / FedAdagrad step (kind "fedadam", "fedyogi", "fedadagrad")."""
    m = _map(lambda m, d: beta1 * m + (1.0 - beta1) * d, _slot(state, "m", params, 0.0), mean)
    v_old = _slot(state, "v", params, tau * tau)
    if kind == "fedadam":
        v = _map(lambda v, d: beta2 * v + (1.0 - beta2) * (d * d), v_old, mean)
    elif kind == "fedyogi":
        v = _map(lambda v, d: v - (1.0 - beta2) * (d * d) * np.sign(v - d * d), v_old, mean)
    elif kind == "fedadagrad":
        v = _map(lambda v, d: v + d * d, v_old, mean)
    else:
        raise ValueError(f"unknown FedOpt kind {kind!r}; expected one of {', '.join(FEDOPT)}")
    new = _map(lambda x, m, v: x + server_lr * m / (np.sqrt(v) + tau), params, m, v)
    return _finite(new, kind), replace(state, slots={**state.slots, "m": m, "v": v})


def server_step(name: str, params: Params, mean: Params, state: ServerState,
                options: StrategyOptions) -> tuple[Params, ServerState]:
    """Apply mean-based strategy `name` to a given mean delta (FedAvg's, or a private one)."""
    if name == "fedavg":
        return _finite(_map(lambda x, d: x + d, params, mean), "fedavg"), state
    if name == "fedavgm":
        return fedavgm_step(params, mean, state, server_lr=options.lr(name),
                            momentum=options.server_momentum)
    if name in FEDOPT:
        return fedopt_step(name, params, mean, state, server_lr=options.lr(name),
                           beta1=options.beta1, beta2=options.beta2, tau=options.tau)
    raise ValueError(f"{name!r} does not step on a mean; mean-based: {', '.join(MEAN_BASED)}")


def fedavgm(params: Params, updates: Sequence[Update], state: ServerState, *,
            server_lr: float = 1.0, momentum: float = 0.9) -> tuple[Params, ServerState]:
    """FedAvg with server momentum (FedAvgM); returns the new weights and state."""
    return fedavgm_step(params, mean_delta(params, updates), state, server_lr=server_lr,
                        momentum=momentum)


def fedadam(params: Params, updates: Sequence[Update], state: ServerState,
            **options: float) -> tuple[Params, ServerState]:
    """FedAdam: server_lr, beta1, beta2, tau as keywords; returns new weights and state."""
    return fedopt_step("fedadam", params, mean_delta(params, updates), state, **options)


def fedyogi(params: Params, updates: Sequence[Update], state: ServerState,
            **options: float) -> tuple[Params, ServerState]:
    """FedYogi: server_lr, beta1, beta2, tau as keywords; returns new weights and state."""
    return fedopt_step("fedyogi", params, mean_delta(params, updates), state, **options)


def fedadagrad(params: Params, updates: Sequence[Update], state: ServerState,
               **options: float) -> tuple[Params, ServerState]:
    """FedAdagrad: server_lr, beta1, tau as keywords; returns new weights and state."""
    return fedopt_step("fedadagrad", params, mean_delta(params, updates), state, **options)


# ------------------------------------------------------------------ robust aggregation


def _stacked(params: Params, updates: Sequence[Update]) -> list[np.ndarray]:
    """Per tensor, the deltas stacked on a new first axis in shard order (after checking)."""
    mean_delta(params, updates)  # the same checks as FedAvg: counts, shapes, finite values
    return [np.stack([np.asarray(delta.tensors()[i], dtype=np.float64) for delta, _ in updates])
            for i in range(len(params.tensors()))]


def median(params: Params, updates: Sequence[Update]) -> Params:
    """old + the coordinate-wise median of the deltas (the mean of the middle two when even)."""
    n = len(updates)
    out = []
    for base, stack in zip(params.tensors(), _stacked(params, updates), strict=True):
        ordered = np.sort(stack, axis=0)
        mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
        out.append(base + mid)
    return _finite(Params.from_tensors(out), "median")


def trimmed_mean(params: Params, updates: Sequence[Update], *, fraction: float) -> Params:
    """old + coordinate-wise mean after dropping floor(fraction * n) values at each end."""
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {fraction!r}")
    n = len(updates)
    cut = math.floor(fraction * n)
    out = []
    for base, stack in zip(params.tensors(), _stacked(params, updates), strict=True):
        kept = np.sort(stack, axis=0)[cut:n - cut]
        out.append(base + kept.sum(axis=0) / float(n - 2 * cut))
    return _finite(Params.from_tensors(out), "trimmed-mean")


def krum_scores(updates: Sequence[Update], f: int) -> np.ndarray:
    """Each update's Krum score: its summed squared L2 distances to its n - f - 2 nearest others."""
    n = len(updates)
    flat = [np.concatenate([np.ravel(t) for t in delta.tensors()]) for delta, _ in updates]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = flat[i] - flat[j]
            dist[i, j] = dist[j, i] = float(np.sum(diff * diff))
    closest = n - f - 2
    scores = np.empty(n)
    for i in range(n):
        others = np.sort(np.delete(dist[i], i))
        scores[i] = float(np.sum(others[:closest]))
    return scores


def check_krum(n: int, f: int, m: int | None = None) -> None:
    """ValueError unless Krum's guarantee holds (n > 2f + 2) and 1 <= m <= n."""
    if f < 0 or n < 2 * f + 3:
        raise ValueError(f"krum with f={f} assumed Byzantine updates needs at least "
                         f"{2 * f + 3} updates a round (n > 2f + 2), got {n}")
    if m is not None and not 1 <= m <= n:
        raise ValueError(f"multi-krum selects m in 1..{n} updates, got m={m}")


def multi_krum(params: Params, updates: Sequence[Update], *, f: int,
               m: int | None = None) -> Params:
    """FedAvg over the m updates with the lowest Krum scores (m defaults to n - f).

    Ties go to the earlier shard; the kept updates are averaged in shard order.
    """
    n = len(updates)
    m = n - f if m is None else m
    check_krum(n, f, m)
    mean_delta(params, updates)  # checked before any distance is taken
    kept = sorted(np.argsort(krum_scores(updates, f), kind="stable")[:m].tolist())
    return fedavg(params, [updates[i] for i in kept])


def krum(params: Params, updates: Sequence[Update], *, f: int) -> Params:
    """old + the delta of the update with the lowest Krum score (Krum: multi-krum, m = 1)."""
    return multi_krum(params, updates, f=f, m=1)


# ------------------------------------------------------------------ by name


def aggregate(name: str, params: Params, updates: Sequence[Update], state: ServerState,
              options: StrategyOptions) -> tuple[Params, ServerState]:
    """The new weights and state after strategy `name` (one of STRATEGIES) on the updates."""
    if name == "fedavg":
        return fedavg(params, updates), state  # the very call of every run before strategies
    if name in MEAN_BASED:
        return server_step(name, params, mean_delta(params, updates), state, options)
    if name == "median":
        return median(params, updates), state
    if name == "trimmed-mean":
        return trimmed_mean(params, updates, fraction=options.trim_fraction), state
    if name == "krum":
        return krum(params, updates, f=options.krum_f), state
    if name == "multi-krum":
        return multi_krum(params, updates, f=options.krum_f, m=options.krum_m), state
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
