"""The MLP d -> h -> k (ReLU, softmax, cross-entropy): parameters, initialisation, training.

Arguments are checked here, once, in Python; then the Cython kernels run without the GIL.
The update rule is the original system's: each step is W -= eta * (gradient SUMMED over the
step's rows), full batch by default. Mini-batches (rows reshuffled every epoch from `seed`)
and classical momentum (v = momentum * v + grad; W -= eta * v, v starting at zero on every
`train` call) use the same summed-gradient rule per batch. FedProx's proximal term
(`prox_mu`, see `train`) adds prox_mu * (W - W_start) to every step's gradient.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from mlcore import _kernels
from mlcore.shapes import mlp_dims

_SEED_MAX = 2**63 - 1
# FedProx's mu: at most this, and at most 1 / eta (check_prox_mu).
MAX_PROX_MU = 1e6


@dataclass
class Params:
    """MLP weights: w1 (d, h), b1 (h,), w2 (h, k), b2 (k,); float64, C-contiguous."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def tensors(self) -> list[np.ndarray]:
        """The tensors in wire order [w1, b1, w2, b2]."""
        return [self.w1, self.b1, self.w2, self.b2]

    @classmethod
    def from_tensors(cls, tensors: list[np.ndarray]) -> Params:
        """Build from [w1, b1, w2, b2] (copied to float64 C order); ValueError on bad shapes."""
        if len(tensors) != 4:
            raise ValueError(f"expected 4 tensors [w1, b1, w2, b2], got {len(tensors)}")
        w1, b1, w2, b2 = (np.array(t, dtype=np.float64, order="C") for t in tensors)
        mlp_dims([w1.shape, b1.shape, w2.shape, b2.shape])
        return cls(w1, b1, w2, b2)

    @property
    def d(self) -> int:
        return int(self.w1.shape[0])

    @property
    def h(self) -> int:
        return int(self.w1.shape[1])

    @property
    def k(self) -> int:
        return int(self.w2.shape[1])

    def copy(self) -> Params:
        """Deep copy (new C-contiguous float64 arrays)."""
        return Params.from_tensors(self.tensors())


class TrainingTimeout(TimeoutError):
    """train() reached its time limit before the last epoch; no weights come out of it."""

    def __init__(self, limit_s: float, epochs_done: int, epochs: int) -> None:
        super().__init__(
            f"training stopped at its time limit of {limit_s:g}s after {epochs_done} of "
            f"{epochs} epochs"
        )
        self.limit_s = limit_s
        self.epochs_done = epochs_done
        self.epochs = epochs


@dataclass(frozen=True)
class TrainOutcome:
    """Parameters after training plus mean loss and error rate on the training rows."""

    params: Params
    loss: float
    error: float


INIT_SCHEMES = ("uniform", "he", "he-normal", "glorot", "glorot-normal")


def init_params(
    d: int, h: int, k: int, seed: int, scale: float = 0.01, *, scheme: str = "uniform"
) -> Params:
    """Initial weights from numpy default_rng(seed), drawn w1, b1, w2, b2 in order.

    scheme "uniform" (the seed's default): every tensor uniform in [-scale, scale); biases are
    drawn like the weights, so every tensor depends on the seed. The field's schemes keep each
    layer's activations at a useful size whatever its width, so SGD can use larger steps; their
    biases are zero and `scale` is ignored:
    "he" / "he-normal": uniform in +-sqrt(6 / fan_in) / normal with std sqrt(2 / fan_in)
    (for ReLU layers); "glorot" / "glorot-normal": the same with fan_in + fan_out in place of
    fan_in / 2, i.e. +-sqrt(6 / (fan_in + fan_out)) / std sqrt(2 / (fan_in + fan_out)).
    """
    for name, value in (("d", d), ("h", h), ("k", k)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    _check_seed(seed)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0 and finite, got {scale!r}")
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}")
    rng = np.random.default_rng(seed)
    if scheme == "uniform":
        return Params(
            w1=rng.uniform(-scale, scale, size=(d, h)),
            b1=rng.uniform(-scale, scale, size=h),
            w2=rng.uniform(-scale, scale, size=(h, k)),
            b2=rng.uniform(-scale, scale, size=k),
        )
    family, _, kind = scheme.partition("-")

    def layer(fan_in: int, fan_out: int) -> np.ndarray:
        variance = 2.0 / fan_in if family == "he" else 2.0 / (fan_in + fan_out)
        if kind == "normal":
            return rng.normal(0.0, math.sqrt(variance), size=(fan_in, fan_out))
        limit = math.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))

    w1 = layer(d, h)
    w2 = layer(h, k)
    return Params(w1=w1, b1=np.zeros(h), w2=w2, b2=np.zeros(k))


def train(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    eta: float,
    batch_size: int = 0,
    momentum: float = 0.0,
    seed: int = 1,
    time_limit_s: float | None = None,
    prox_mu: float = 0.0,
) -> TrainOutcome:
    """Train a copy of `params` on (x, y); batch_size 0 = full batch. Bitwise deterministic.

    The kernels run without the GIL for the whole loop; loss and error are measured on
    (x, y) after training. With `time_limit_s` the kernel reads the clock between steps and
    stops once the limit has passed: TrainingTimeout. A run that finishes in time has the
    very bits of a run without a limit (the clock never touches the arithmetic).

    `prox_mu` > 0 is FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
    MLSys 2020): each step minimises the batch's loss plus (prox_mu / 2) ||w - w_t||^2, w_t
    being `params` (the round's global weights the task starts from), so every step's
    gradient gains prox_mu * (w - w_t), before momentum, as in the paper's local solver.
    Choices, stated:
    * every tensor is in w, biases included: the paper's w is the whole parameter vector
      and its reference code applies the term to every trainable variable;
    * the loss here is SUMMED over the step's rows (the original system's rule), where the
      paper's is a mean: prox_mu here is the paper's mu times the rows per step (full batch:
      the shard's rows), i.e. mu = 0.01 on 1,000-row full-batch shards is prox_mu = 10;
    * the term is zero at the first step (w = w_t) and grows as w leaves w_t.
    prox_mu = 0 runs the kernels' loops without the term: bitwise the results of no FedProx.
    """
    _check_settings(epochs, eta, batch_size, momentum, seed, time_limit_s)
    check_prox_mu(prox_mu, eta)
    given = _checked_params(params, copy=False)
    out = _working_copy(given)
    xs, ys = _checked_data(out, x, y)
    limit_s = float(time_limit_s or 0.0)
    w1, b1, w2, b2 = out.tensors()
    if prox_mu:  # the anchor is `given`, which training never writes (it trains `out`)
        done = _kernels.train(
            xs, ys, w1, b1, w2, b2, int(epochs), float(eta), int(batch_size), float(momentum),
            seed, limit_s, None, float(prox_mu), *given.tensors(),
        )
    else:
        done = _kernels.train(
            xs, ys, w1, b1, w2, b2, int(epochs), float(eta), int(batch_size), float(momentum),
            seed, limit_s,
        )
    if done < epochs:
        raise TrainingTimeout(limit_s, int(done), int(epochs))
    if not all(np.isfinite(t).all() for t in out.tensors()):
        raise FloatingPointError(
            f"training diverged (non-finite weights) with eta={eta}; lower the learning rate"
        )
    labels = np.empty(xs.shape[0], dtype=np.int64)
    summed = _kernels.evaluate(xs, ys, w1, b1, w2, b2, labels)  # loss and labels in one pass
    return TrainOutcome(
        params=out,
        loss=summed / len(ys),
        error=float(np.mean(labels != ys)),
    )


def _check_settings(
    epochs: int, eta: float, batch_size: int, momentum: float, seed: int,
    time_limit_s: float | None,
) -> None:
    """ValueError naming the first of train()'s settings that is out of range."""
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not _is_real(eta) or not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be > 0 and finite, got {eta!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0 (0 = full batch), got {batch_size!r}")
    if not _is_real(momentum) or not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    _check_seed(seed)
    if time_limit_s is not None and not (
        _is_real(time_limit_s) and math.isfinite(time_limit_s) and time_limit_s > 0
    ):
        raise ValueError(f"time_limit_s must be > 0 and finite (or None), got {time_limit_s!r}")


def check_prox_mu(prox_mu: float, eta: float) -> None:
    """ValueError unless FedProx's prox_mu is a finite number in [0, MAX_PROX_MU] with
    eta * prox_mu <= 1 (eta already checked).

    The term alone moves w - w_t by the factor (1 - eta * prox_mu) per step: beyond 1 the
    pull overshoots the round's weights, at 2 it oscillates without end and beyond it
    diverges, so no useful setting is refused.
    """
    if not _is_real(prox_mu) or not (math.isfinite(prox_mu) and 0 <= prox_mu <= MAX_PROX_MU):
        raise ValueError(f"prox_mu must be a finite number in [0, {MAX_PROX_MU:g}], "
                         f"got {prox_mu!r}")
    if eta * prox_mu > 1:
        raise ValueError(
            f"prox_mu * eta must be <= 1 (a larger pull overshoots the round's weights), got "
            f"{prox_mu!r} * {eta!r} = {prox_mu * eta:g}; lower prox_mu or eta"
        )


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """Most probable class per row, int64 (ties: lowest class index)."""
    p = _checked_params(params, copy=False)
    return _predict(p, _checked_x(p, x))


def error_rate(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose predicted class differs from y."""
    p = _checked_params(params, copy=False)
    xs, ys = _checked_data(p, x, y)
    return float(np.mean(_predict(p, xs) != ys))


def loss(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy over the rows."""
    return summed_loss(params, x, y) / len(y)


def summed_loss(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Cross-entropy summed over the rows (sums of shards add up exactly as counts do)."""
    p = _checked_params(params, copy=False)
    xs, ys = _checked_data(p, x, y)
    return _kernels.summed_loss(xs, ys, *p.tensors())


def predict_proba(params: Params, x: np.ndarray) -> np.ndarray:
    """Softmax class probabilities (n, k)."""
    p = _checked_params(params, copy=False)
    xs = _checked_x(p, x)
    out = np.empty((xs.shape[0], p.k))
    w1, b1, w2, b2 = p.tensors()
    _kernels.forward(xs, w1, b1, w2, b2, out)
    return out


def gradient(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Gradient of the SUMMED cross-entropy over all rows (one full-batch step's gradient)."""
    p = _checked_params(params, copy=False)
    xs, ys = _checked_data(p, x, y)
    g = Params(np.empty_like(p.w1), np.empty_like(p.b1), np.empty_like(p.w2), np.empty_like(p.b2))
    _kernels.gradient(xs, ys, *p.tensors(), *g.tensors())
    return g


def _predict(p: Params, xs: np.ndarray) -> np.ndarray:
    labels = np.empty(xs.shape[0], dtype=np.int64)
    w1, b1, w2, b2 = p.tensors()
    _kernels.predict(xs, w1, b1, w2, b2, labels)
    return labels


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or not (0 <= seed <= _SEED_MAX):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _checked_params(params: Params, *, copy: bool = True) -> Params:
    """Validated float64 C-contiguous params (a fresh copy unless copy=False and already so)."""
    if not isinstance(params, Params):
        raise TypeError(f"expected Params, got {type(params).__name__}")
    if copy:
        return params.copy()
    tensors = params.tensors()
    if all(isinstance(t, np.ndarray) and t.dtype == np.float64 and t.flags.c_contiguous
           for t in tensors):
        if not _dims_agree(*tensors):  # mlp_dims builds its message on every call: ~3 us
            mlp_dims([t.shape for t in tensors])  # raises ValueError naming what is off
        return params
    return params.copy()


def _dims_agree(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> bool:
    """mlp_dims' test (w1 (d, h), b1 (h,), w2 (h, k), b2 (k,), d, h, k >= 1), no message."""
    return (w1.ndim == 2 and w2.ndim == 2 and w1.shape[0] >= 1 and w1.shape[1] >= 1
            and w2.shape[1] >= 1 and b1.shape == (w1.shape[1],) and w2.shape[0] == w1.shape[1]
            and b2.shape == (w2.shape[1],))


def _working_copy(params: Params) -> Params:
    """A copy for the kernels to train in place, w1 starting on a 64-byte boundary.

    The kernels then work in this w1 itself (h a multiple of 4) instead of a copy of their
    own: a wide model's weights are nearly all w1 (see mlcore/_mlp.h, "Memory").
    """
    w1 = params.w1
    buf = np.empty(w1.size + 8, dtype=np.float64)
    start = (-buf.ctypes.data % 64) // 8
    aligned = buf[start:start + w1.size].reshape(w1.shape)
    np.copyto(aligned, w1)
    return Params(aligned, params.b1.copy(), params.w2.copy(), params.b2.copy())


def _checked_x(p: Params, x: np.ndarray) -> np.ndarray:
    xs = np.ascontiguousarray(x, dtype=np.float64)
    if xs.ndim != 2 or xs.shape[0] < 1 or xs.shape[1] != p.d:
        raise ValueError(f"x must have shape (n >= 1, {p.d}), got {np.shape(x)}")
    if not np.isfinite(xs).all():
        raise ValueError("x contains NaN or infinite values")
    return xs


def _checked_data(p: Params, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs = _checked_x(p, x)
    y_arr = np.asarray(y)
    if y_arr.shape != (xs.shape[0],):
        raise ValueError(f"y must have shape ({xs.shape[0]},) to match x, got {y_arr.shape}")
    if y_arr.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer labels, got dtype {y_arr.dtype}")
    ys = np.ascontiguousarray(y_arr, dtype=np.int64)
    if ys.min() < 0 or ys.max() >= p.k:
        raise ValueError(
            f"labels must be in [0, {p.k}) for a model with k={p.k} classes, "
            f"got range [{ys.min()}, {ys.max()}]"
        )
    return xs, ys
