"""FedAvg: a sample-weighted mean of the deltas, summed in the order given."""

from __future__ import annotations

import numpy as np
import pytest

from mlcore.fedavg import fedavg
from mlcore.model import Params, init_params


def _delta(params: Params, value: float) -> Params:
    return Params.from_tensors([np.full_like(t, value) for t in params.tensors()])


def test_fedavg_weights_by_sample_count():
    base = init_params(3, 4, 2, seed=1)
    out = fedavg(base, [(_delta(base, 1.0), 1), (_delta(base, 4.0), 3)])
    for new, old in zip(out.tensors(), base.tensors(), strict=True):
        np.testing.assert_allclose(new, old + (1.0 * 1 + 4.0 * 3) / 4)


def test_fedavg_is_identity_shift_when_all_deltas_are_equal():
    base = init_params(3, 4, 2, seed=1)
    delta = init_params(3, 4, 2, seed=2)
    out = fedavg(base, [(delta, 10), (delta, 300), (delta, 7)])
    for new, old, d in zip(out.tensors(), base.tensors(), delta.tensors(), strict=True):
        np.testing.assert_allclose(new, old + d, rtol=1e-15, atol=1e-18)
    zero = fedavg(base, [(_delta(base, 0.0), 5), (_delta(base, 0.0), 9)])
    for new, old in zip(zero.tensors(), base.tensors(), strict=True):
        np.testing.assert_array_equal(new, old)


def test_fedavg_sums_in_the_order_given():
    # 1e16 + 1 - 1e16 is 0 in float64 but 1 when summed in another order: the order shows.
    base = Params.from_tensors([np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.zeros(1)])
    updates = [(_delta(base, 1e16), 1), (_delta(base, 1.0), 1), (_delta(base, -1e16), 1)]
    forward = fedavg(base, updates).w1[0, 0]
    assert forward == ((1e16 + 1.0) - 1e16) / 3
    assert forward != fedavg(base, [updates[0], updates[2], updates[1]]).w1[0, 0]
    assert fedavg(base, updates).w1.tobytes() == fedavg(base, updates).w1.tobytes()


def test_fedavg_does_not_modify_its_inputs():
    base = init_params(3, 4, 2, seed=1)
    delta = init_params(3, 4, 2, seed=2)
    before = [t.copy() for t in (*base.tensors(), *delta.tensors())]
    fedavg(base, [(delta, 2)])
    after = [*base.tensors(), *delta.tensors()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_fedavg_rejects_bad_updates():
    base = init_params(3, 4, 2, seed=1)
    with pytest.raises(ValueError, match="at least one"):
        fedavg(base, [])
    with pytest.raises(ValueError, match="sample count"):
        fedavg(base, [(_delta(base, 1.0), 0)])
    with pytest.raises(ValueError, match="update 1: delta shapes"):
        fedavg(base, [(_delta(base, 1.0), 1), (init_params(3, 5, 2, seed=1), 1)])
