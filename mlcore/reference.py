"""The MLP's maths in plain numpy: the oracle the Cython kernels are tested against.

Model: z1 = x @ w1 + b1, a1 = relu(z1), z2 = a1 @ w2 + b2, p = softmax(z2),
loss = -sum(log p[y]) (summed over rows; `mean_loss` divides by n).
Gradients are SUMMED over rows, and one step is W -= eta * grad: the original system's rule.
Mini-batch SGD uses the same rule per batch, with classical momentum
(v = momentum * v + grad; W -= eta * v) and rows shuffled each epoch by `epoch_orders`.
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
) -> Params:
    """Gradient descent from `params` (not modified); batch_size 0 = full batch, rows in order."""
    p = params.copy()
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
            for tensor, v, g in zip(p.tensors(), velocity, grads, strict=True):
                v *= momentum
                v += g
                tensor -= eta * v
    return p
