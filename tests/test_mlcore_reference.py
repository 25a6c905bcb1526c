"""The numpy reference is the oracle for the kernels, so it is checked against calculus."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from mlcore import reference
from mlcore.model import init_params


def _problem(n: int = 12, d: int = 5, h: int = 7, k: int = 4, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, size=(n, d)).astype(np.float64)
    y = rng.integers(0, k, size=n)
    # Larger weights than the default init so that the ReLU mask and softmax are far from flat.
    return init_params(d, h, k, seed=seed, scale=0.3), x, y


def test_reference_gradient_matches_finite_differences():
    params, x, y = _problem()
    grads = reference.gradients(params, x, y)
    eps = 1e-6
    for tensor, grad in zip(params.tensors(), grads.tensors(), strict=True):
        numeric = np.empty_like(tensor)
        for idx in np.ndindex(tensor.shape):
            saved = tensor[idx]
            tensor[idx] = saved + eps
            up = reference.summed_loss(params, x, y)
            tensor[idx] = saved - eps
            down = reference.summed_loss(params, x, y)
            tensor[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_reference_softmax_rows_sum_to_one():
    params, x, _ = _problem()
    _, _, p = reference.forward(params, x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-14)


def test_reference_full_batch_step_is_eta_times_summed_gradient():
    params, x, y = _problem()
    grads = reference.gradients(params, x, y)
    after = reference.train(params, x, y, epochs=1, eta=0.01)
    for before, g, new in zip(params.tensors(), grads.tensors(), after.tensors(), strict=True):
        np.testing.assert_array_equal(new, before - 0.01 * g)


def test_reference_epoch_orders_are_seeded_permutations():
    a = list(reference.epoch_orders(50, 3, seed=7))
    b = list(reference.epoch_orders(50, 3, seed=7))
    c = list(reference.epoch_orders(50, 3, seed=8))
    for order in a:
        assert sorted(order.tolist()) == list(range(50))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("state", [0, 1, 2**64 - 1])
def test_splitmix64_matches_published_constants(state):
    # Independent re-statement of SplitMix64 (Steele, Lea, Flood 2014) in wrapped arithmetic.
    mask = 2**64 - 1
    z = (state + 0x9E3779B97F4A7C15) & mask
    expect_state = z
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    assert reference.splitmix64(state) == (expect_state, z ^ (z >> 31))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_reference_prox_step_adds_mu_times_the_distance_from_the_start(momentum):
    """FedProx (Li et al. 2020): each step descends the summed loss plus
    (mu / 2) ||w - w_start||^2, so its gradient gains mu * (w - w_start), every tensor, before
    momentum. Two full-batch steps written out: the first has no term (w = w_start)."""
    params, x, y = _problem()
    eta, mu = 0.01, 3.0
    after = reference.train(params, x, y, epochs=2, eta=eta, momentum=momentum, prox_mu=mu)
    start = params.tensors()
    g0 = reference.gradients(params, x, y).tensors()
    w1 = [w - eta * g for w, g in zip(start, g0, strict=True)]
    g1 = reference.gradients(type(params)(*w1), x, y).tensors()
    for w0, w, a, b, new in zip(start, w1, g0, g1, after.tensors(), strict=True):
        v = (a * momentum) + (b + mu * (w - w0))
        np.testing.assert_array_equal(new, w - eta * v)
    plain = reference.train(params, x, y, epochs=2, eta=eta, momentum=momentum)
    assert not np.array_equal(plain.w1, after.w1)
    zero = reference.train(params, x, y, epochs=2, eta=eta, momentum=momentum, prox_mu=0.0)
    for p, z in zip(plain.tensors(), zero.tensors(), strict=True):
        np.testing.assert_array_equal(p, z)


def test_reference_prox_gradient_is_the_proximal_objectives():
    """mu * (w - w_start) is the gradient of (mu / 2) ||w - w_start||^2 (finite differences
    of the whole objective, summed loss plus the term, after one step away from the start)."""
    params, x, y = _problem()
    mu, eta = 2.0, 0.01
    moved = reference.train(params, x, y, epochs=1, eta=eta)

    def objective() -> float:
        term = sum(float(np.sum((w - w0) ** 2))
                   for w, w0 in zip(moved.tensors(), params.tensors(), strict=True))
        return reference.summed_loss(moved, x, y) + mu / 2 * term

    grads = reference.gradients(moved, x, y).tensors()
    eps = 1e-6
    for tensor, w0, grad in zip(moved.tensors(), params.tensors(), grads, strict=True):
        want = grad + mu * (tensor - w0)
        for idx in list(np.ndindex(tensor.shape))[:12]:
            saved = tensor[idx]
            tensor[idx] = saved + eps
            up = objective()
            tensor[idx] = saved - eps
            down = objective()
            tensor[idx] = saved
            assert (up - down) / (2 * eps) == pytest.approx(want[idx], rel=1e-5, abs=1e-6)


def _exact_fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once: exact rationals, then Python's correctly rounded division."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_reference_fma_rounds_once_like_the_kernels_fma():
    """reference.fma (numpy has none before Python 3.13) is a * b + c rounded once, checked
    against exact rational arithmetic where double rounding would show: sums that nearly
    cancel the product, products with short mantissas (ties), wide exponent spreads, and
    signed zeros."""
    rng = np.random.default_rng(17)
    n = 4000
    a = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)
    b = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)
    spread = rng.standard_normal(n) * 2.0 ** rng.integers(-70, 70, n)
    near = -(a * b) * (1 + rng.integers(-4, 5, n) * 2.0**-52)
    tiny = -(a * b) + (a * b) * 2.0 ** -rng.integers(50, 110, n) * rng.choice([-1, 1], n)
    a_short = 1 + rng.integers(0, 2**26, n) * 2.0**-26
    b_short = 1 + rng.integers(0, 2**27, n) * 2.0**-27
    c_short = rng.choice([-1, 1], n) * 2.0 ** rng.integers(-80, 5, n)
    cases = [(a, b, spread), (a, b, near), (a, b, tiny), (a_short, b_short, c_short)]
    for x, y, z in cases:
        got = reference.fma(x, y, z)
        triples = zip(x.tolist(), y.tolist(), z.tolist(), strict=True)
        want = np.array([_exact_fma(*t) for t in triples])
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    for x, y, z in itertools.product([0.0, -0.0, 1.0, -1.0], repeat=3):
        want = x * y + z  # the product is exact: IEEE's sum, signed zeros and all
        got = float(reference.fma(np.array([x]), np.array([y]), np.array([z]))[0])
        assert (got, math.copysign(1, got)) == (want, math.copysign(1, want)), (x, y, z)
