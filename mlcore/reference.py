"""The MLP's maths in plain numpy: the oracle the Cython kernels are tested against.

Model: z1 = x @ w1 + b1, a1 = relu(z1), z2 = a1 @ w2 + b2, p = softmax(z2),
loss = -sum(log p[y]) (summed over rows; `mean_loss` divides by n).
Gradients are SUMMED over rows, and one step is W -= eta * grad: the original system's rule.
Mini-batch SGD uses the same rule per batch, with classical momentum
(v = momentum * v + grad; W -= eta * v) and rows shuffled each epoch by `epoch_orders`.
FedProx (`prox_mu`) adds prox_mu * (W - W_start) to every step's gradient of every tensor.
`forward` is the textbook form (BLAS products); `predict_proba` and `predict` sum in the
kernels' fixed order, one fused multiply-add per term (`fma`, exact in numpy), with their exp,
so their answers are the kernels' to the bit.
Speed is not a goal here; clarity is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mlcore.model import Params

_MASK64 = (1 << 64) - 1


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (z1, a1, p) for rows x: pre-activations (n, h), hidden (n, h), softmax (n, k)."""
    z1 = x @ params.w1 + params.b1
    a1 = np.maximum(z1, 0.0)
    z2 = a1 @ params.w2 + params.b2
    z2 = z2 - z2.max(axis=1, keepdims=True)
    e = np.exp(z2)
    return z1, a1, e / e.sum(axis=1, keepdims=True)


_SPLITTER = 134217729.0  # 2^27 + 1: Veltkamp's split of a double into two 26-bit halves


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, e) with s = a + b rounded and s + e = a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once, element-wise: the kernels' fused multiply-add, bit for bit.

    numpy has no fma (math.fma needs Python 3.13), so it is emulated exactly (Boldo and
    Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
    rounding to odd", IEEE TC 2008): a * b = uh + ul exactly (Dekker's product with
    Veltkamp's split), c + uh = th + tl exactly (TwoSum), v = tl + ul rounded to odd (the
    neighbour with an odd last bit when inexact), then th + v rounded to nearest is
    a * b + c rounded once. Exact for finite inputs whose products neither overflow nor
    underflow (|a|, |b| < 2^996, a * b zero or above 2^-969): far outside an MLP's range.
    """
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    uh = a * b
    ca, cb = _SPLITTER * a, _SPLITTER * b
    ah, bh = ca - (ca - a), cb - (cb - b)
    al, bl = a - ah, b - bh
    ul = ((ah * bh - uh) + ah * bl + al * bh) + al * bl
    th, tl = _two_sum(c, uh)
    v, err = _two_sum(tl, ul)
    inexact_even = (err != 0) & ((v.view(np.uint64) & np.uint64(1)) == 0)
    v = np.where(inexact_even, np.nextafter(v, np.copysign(np.inf, err)), v)
    out = th + v
    # an exact zero takes IEEE's sign rule for the sum of a * b and c: that of uh + c
    return np.where(out == 0.0, uh + c, out)


def exp_nonpos(t: np.ndarray) -> np.ndarray:
    """exp(t) for t <= 0 as the kernels compute it (mlcore_exp_nonpos in _mlp.h), bit for bit.

    Cody-Waite reduction t = k ln2 + r, a degree-13 polynomial in r by Estrin's scheme, then
    2^k built in the exponent bits; every step one IEEE operation, so numpy gives the C bits.
    """
    magic = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer
    t = np.maximum(np.asarray(t, dtype=np.float64), -708.0)
    kd = t * 1.4426950408889634 + magic
    k = kd - magic
    r = (t - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    p = 1.0 + (r + ((0.5 + r * (1.0 / 6.0)) * r2
                    + ((1.0 / 24.0 + r * (1.0 / 120.0))
                       + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2) * r4
                    + (((1.0 / 40320.0 + r * (1.0 / 362880.0))
                        + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2)
                       + (1.0 / 479001600.0 + r * (1.0 / 6227020800.0)) * r4) * r8))
    scale = ((kd.view(np.uint64) + np.uint64(1023)) << np.uint64(52)).view(np.float64)
    return p * scale


def logits(params: Params, x: np.ndarray) -> np.ndarray:
    """z2 (n, k) summed in the kernels' fixed order, so the bits are theirs for any batch.

    z1 = b1 + x[:, 0] w1[0] + x[:, 1] w1[1] + ... left to right; z2 = b2 + the terms of the
    active units (z1 > 0) in ascending unit order; each term added by one fused
    multiply-add, as the kernels do. Each row's sums are its own: no BLAS, whose blocking
    would make a row's bits depend on the rows beside it.
    """
    z1 = np.broadcast_to(params.b1, (x.shape[0], params.b1.shape[0])).copy()
    for i in range(x.shape[1]):
        z1 = fma(x[:, i : i + 1], params.w1[i], z1)
    z2 = np.broadcast_to(params.b2, (x.shape[0], params.b2.shape[0])).copy()
    for j in range(z1.shape[1]):
        active = z1[:, j : j + 1] > 0.0  # inactive units are skipped, not added as zeros
        z2 = np.where(active, fma(z1[:, j : j + 1], params.w2[j], z2), z2)
    return z2


def softmax(z2: np.ndarray) -> np.ndarray:
    """Softmax of logits (n, k) as the kernels compute it: e = exp(z - max) with exp_nonpos,
    s = (s0 + s1) + (s2 + s3) where s_l sums e[:, c] for c % 4 == l in ascending c, and
    p = e * (1 / s)."""
    e = exp_nonpos(z2 - z2.max(axis=1, keepdims=True))
    lanes = [np.zeros(len(e)) for _ in range(4)]
    for c in range(e.shape[1]):
        lanes[c % 4] = lanes[c % 4] + e[:, c]
    s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    return e * (1.0 / s)[:, None]


def predict_proba(params: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, k) with the kernels' bits (mlcore.model.predict_proba)."""
    return softmax(logits(params, x))


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """Most probable class per row from the logits, first maximum on ties (int64)."""
    return np.argmax(logits(params, x), axis=1).astype(np.int64)


def summed_loss(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Cross-entropy summed over rows, computed stably from the logits."""
    a1 = np.maximum(x @ params.w1 + params.b1, 0.0)
    z2 = a1 @ params.w2 + params.b2
    m = z2.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z2 - m).sum(axis=1)) + m[:, 0]
    return float(np.sum(lse - z2[np.arange(len(y)), y]))


def mean_loss(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy over rows."""
    return summed_loss(params, x, y) / len(y)


def gradients(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Gradient of the summed loss with respect to every tensor (backpropagation)."""
    z1, a1, p = forward(params, x)
    d2 = p.copy()
    d2[np.arange(len(y)), y] -= 1.0
    d1 = (d2 @ params.w2.T) * (z1 > 0)
    return Params(w1=x.T @ d1, b1=d1.sum(axis=0), w2=a1.T @ d2, b2=d2.sum(axis=0))


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: (new_state, output), both unsigned 64-bit ints."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def epoch_orders(n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """Yield each epoch's row order: Fisher-Yates over the previous order, SplitMix64 stream."""
    order = np.arange(n, dtype=np.int64)
    state = seed & _MASK64
    for _ in range(epochs):
        for i in range(n - 1, 0, -1):
            state, r = splitmix64(state)
            j = r % (i + 1)
            order[i], order[j] = order[j], order[i]
        yield order.copy()


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
    prox_mu: float = 0.0,
) -> Params:
    """Gradient descent from `params` (not modified); batch_size 0 = full batch, rows in order.

    prox_mu: FedProx's proximal term (Li et al. 2020), (prox_mu / 2) ||w - params||^2 added
    to each step's summed loss, for every tensor (biases included): each step's gradient
    gains prox_mu * (w - params) before momentum (see mlcore.model.train for the choices).
    """
    p = params.copy()
    anchor = params.copy().tensors()
    velocity = [np.zeros_like(t) for t in p.tensors()]
    n = len(y)
    if batch_size <= 0:
        orders: Iterator[np.ndarray] = (np.arange(n) for _ in range(epochs))
    else:
        orders = epoch_orders(n, epochs, seed)
    step = n if batch_size <= 0 else batch_size
    for order in orders:
        for start in range(0, n, step):
            rows = order[start : start + step]
            grads = gradients(p, x[rows], y[rows]).tensors()
            for tensor, w0, v, g in zip(p.tensors(), anchor, velocity, grads, strict=True):
                if prox_mu != 0.0:
                    g = g + prox_mu * (tensor - w0)
                v *= momentum
                v += g
                tensor -= eta * v
    return p
