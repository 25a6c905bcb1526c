"""Input standardisation: statistics from the training shards, applied the same everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlcore.standardize import Standardization, fit_standardization, standardize


def shards(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 16, size=(n, 5)).astype(np.float64) for n in (7, 30, 1, 12)]


def test_statistics_are_mean_and_inverse_std_over_all_training_rows() -> None:
    parts = shards()
    rows = np.concatenate(parts)

    stats = fit_standardization(parts)

    np.testing.assert_allclose(stats.shift, rows.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.scale, 1 / rows.std(axis=0), rtol=1e-12)
    x = stats.apply(rows)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(x.std(axis=0), 1, rtol=1e-12)


def test_statistics_are_bitwise_reproducible_and_follow_shard_order() -> None:
    a, b = fit_standardization(shards()), fit_standardization(shards())

    assert a == b
    assert np.array(a.shift).tobytes() == np.array(b.shift).tobytes()


def test_constant_feature_gets_scale_one_and_maps_to_zero() -> None:
    parts = shards()
    for p in parts:
        p[:, 2] = 4.0

    stats = fit_standardization(parts)

    assert stats.scale[2] == 1.0 and stats.shift[2] == 4.0
    assert not stats.apply(parts[0])[:, 2].any()


def test_apply_returns_a_new_array_and_leaves_the_input_alone() -> None:
    x = shards()[1]
    before = x.copy()
    stats = fit_standardization([x])

    out = stats.apply(x)

    assert out is not x and not np.shares_memory(out, x)
    assert x.tobytes() == before.tobytes()
    assert out.flags.c_contiguous and out.dtype == np.float64
    # the fixed rule, written out: subtract, then multiply
    want = (before - np.array(stats.shift)) * np.array(stats.scale)
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    ("shift", "scale", "complaint"),
    [
        ([0.0] * 4, [1.0] * 5, "feature_shift has 4 values"),
        ([0.0] * 5, [1.0] * 6, "feature_scale has 6 values"),
        ([0.0, float("nan"), 0, 0, 0], [1.0] * 5, r"feature_shift\[1\]"),
        ([0.0] * 5, [1.0, 1, 1, 1, float("inf")], r"feature_scale\[4\]"),
    ],
)
def test_bad_statistics_are_refused_naming_the_field(shift, scale, complaint) -> None:
    with pytest.raises(ValueError, match=complaint):
        standardize(np.zeros((2, 5)), shift, scale)


def test_metadata_round_trips_exactly_through_json() -> None:
    stats = fit_standardization(shards(3))

    back = Standardization.from_meta(json.loads(json.dumps(stats.to_meta())))

    assert back == stats
    with pytest.raises(ValueError, match="no valid standardisation"):
        Standardization.from_meta({"feature_shift": [1.0]})


def test_no_shards_or_ragged_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_standardization([])
    with pytest.raises(ValueError, match="shard 1"):
        fit_standardization([np.zeros((3, 5)), np.zeros((3, 4))])
