"""init_params: the seed's default bits stay, the field's schemes have the advertised spread."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlcore.model import INIT_SCHEMES, init_params


def test_default_scheme_keeps_the_seeds_bits() -> None:
    # The seed's rule written out independently: uniform +-0.01 drawn w1, b1, w2, b2 in order.
    rng = np.random.default_rng(7)
    want = [rng.uniform(-0.01, 0.01, size=s) for s in ((16, 24), 24, (24, 26), 26)]

    for got in (init_params(16, 24, 26, 7), init_params(16, 24, 26, 7, scheme="uniform")):
        for g, w in zip(got.tensors(), want, strict=True):
            assert g.tobytes() == w.tobytes()


@pytest.mark.parametrize(
    ("scheme", "std_w1", "std_w2"),
    [
        ("he", math.sqrt(2 / 64), math.sqrt(2 / 512)),
        ("he-normal", math.sqrt(2 / 64), math.sqrt(2 / 512)),
        ("glorot", math.sqrt(2 / (64 + 512)), math.sqrt(2 / (512 + 26))),
        ("glorot-normal", math.sqrt(2 / (64 + 512)), math.sqrt(2 / (512 + 26))),
    ],
)
def test_field_schemes_have_their_spread_and_zero_biases(scheme, std_w1, std_w2) -> None:
    p = init_params(64, 512, 26, 3, scheme=scheme)

    assert not p.b1.any() and not p.b2.any()
    assert p.w1.std() == pytest.approx(std_w1, rel=0.05)
    assert p.w2.std() == pytest.approx(std_w2, rel=0.05)
    assert abs(p.w1.mean()) < 0.1 * std_w1
    if not scheme.endswith("normal"):  # uniform: bounded by sqrt(3) standard deviations
        assert np.abs(p.w1).max() <= math.sqrt(3) * std_w1
        assert np.abs(p.w1).max() > 0.95 * math.sqrt(3) * std_w1
    else:  # normal: tails beyond the uniform bound exist
        assert np.abs(p.w1).max() > math.sqrt(3) * std_w1


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_every_scheme_is_seeded(scheme) -> None:
    a, b = init_params(16, 32, 26, 5, scheme=scheme), init_params(16, 32, 26, 5, scheme=scheme)
    c = init_params(16, 32, 26, 6, scheme=scheme)

    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.tensors(), b.tensors(), strict=True))
    assert a.w1.tobytes() != c.w1.tobytes()
    assert all(t.dtype == np.float64 and t.flags.c_contiguous for t in a.tensors())


def test_unknown_scheme_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="he, he-normal"):
        init_params(16, 24, 26, 1, scheme="xavier")
