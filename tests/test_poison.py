"""Poisoned nodes (compute_node --poison): the pure function, then real node processes.

A poisoned delta must be exactly what the mode says (negation, x100, noise of the same
norm, seeded), and still look like an honest one to the client: finite values, the
model's shapes. The process test sends the same task to a clean node and to poisoned
ones; training is deterministic, so the clean node's delta is what the poisoned nodes
trained too, and their answers can be checked against it value by value.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_compute_node import digest_of, make_shard, make_task, started_nodes

from compute_node.poison import MODES, SCALE_FACTOR, Poisoner, l2_norm, poison, task_seed
from idl.tensors import decode_tensors
from mlcore.model import init_params

SHAPES = [(16, 8), (8,), (8, 5), (5,)]


def a_delta(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 1e-3, shape) for shape in SHAPES]


def total_norm(tensors: list[np.ndarray]) -> float:
    """The independent computation: every value in one vector, numpy's own norm."""
    return float(np.linalg.norm(np.concatenate([t.ravel() for t in tensors])))


# ------------------------------------------------------------------ the pure function


def test_sign_flip_is_the_exact_negation() -> None:
    delta = a_delta()

    flipped = poison(delta, "sign-flip")

    for got, d in zip(flipped, delta, strict=True):
        assert got.shape == d.shape and got.dtype == np.float64
        assert np.array_equal(got, -d)


def test_scale_is_exactly_a_hundred_times() -> None:
    delta = a_delta()

    scaled = poison(delta, "scale")

    assert SCALE_FACTOR == 100.0
    for got, d in zip(scaled, delta, strict=True):
        assert np.array_equal(got, d * 100.0)


def test_noise_has_the_delta_norm_the_shapes_and_nothing_of_the_delta() -> None:
    delta = a_delta()

    noise = poison(delta, "noise", seed=42)

    assert [n.shape for n in noise] == SHAPES
    assert all(np.isfinite(n).all() for n in noise)
    assert total_norm(noise) == pytest.approx(total_norm(delta), rel=1e-12)
    flat_noise = np.concatenate([n.ravel() for n in noise])
    flat_delta = np.concatenate([d.ravel() for d in delta])
    assert abs(np.corrcoef(flat_noise, flat_delta)[0, 1]) < 0.2  # not the delta in disguise


def test_noise_is_seeded() -> None:
    delta = a_delta()

    once, again = poison(delta, "noise", seed=42), poison(delta, "noise", seed=42)
    other = poison(delta, "noise", seed=43)

    assert all(np.array_equal(a, b) for a, b in zip(once, again, strict=True))
    assert not np.array_equal(once[0], other[0])


def test_noise_of_a_zero_delta_is_zero() -> None:
    zero = [np.zeros(shape) for shape in SHAPES]

    assert all(not n.any() for n in poison(zero, "noise", seed=1))


def test_the_delta_given_is_left_untouched() -> None:
    delta = a_delta()
    before = [d.copy() for d in delta]

    for mode in MODES:
        poison(delta, mode, seed=1)

    assert all(np.array_equal(a, b) for a, b in zip(delta, before, strict=True))


def test_the_norm_does_not_overflow_where_the_squares_would() -> None:
    huge = [np.full(3, 1e200), np.full(4, -1e200)]

    assert l2_norm(huge) == pytest.approx(1e200 * np.sqrt(7), rel=1e-12)
    assert l2_norm(poison(huge, "noise", seed=3)) == pytest.approx(l2_norm(huge), rel=1e-12)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sign-flip, scale, noise"):
        poison(a_delta(), "bogus")
    with pytest.raises(ValueError, match="got 'bogus'"):
        Poisoner("bogus", 1)


def test_the_task_seed_follows_node_shard_and_weights() -> None:
    weights = a_delta(1)
    later = a_delta(2)  # the next round's weights

    seed = task_seed(7, "ab" * 32, weights)

    assert seed == task_seed(7, "ab" * 32, [w.copy() for w in weights])
    assert len({seed, task_seed(8, "ab" * 32, weights), task_seed(7, "cd" * 32, weights),
                task_seed(7, "ab" * 32, later)}) == 4


def test_a_poisoner_gives_one_task_the_same_noise_and_another_task_other_noise() -> None:
    delta, weights = a_delta(), a_delta(1)
    poisoner = Poisoner("noise", 7)

    first = poisoner.apply(delta, "ab" * 32, weights)
    again = poisoner.apply(delta, "ab" * 32, weights)
    other_shard = poisoner.apply(delta, "cd" * 32, weights)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other_shard[0])


# ------------------------------------------------------------------ real node processes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator:
    """start(*args) -> (process, client); every process stopped by PID afterwards."""
    with started_nodes(tmp_path) as start_with:

        def start(*extra: str):
            return start_with(0.0, "--load-delay-s", "0", "--seed", "7", *extra)

        yield start


def trained_delta(client, data: bytes) -> list[np.ndarray]:
    """Send the shard, then the same task every node gets; the delta it answers."""
    client.put_shard(digest_of(data), data, "")
    result = client.train(make_task(data, init_params(16, 8, 5, seed=3), epochs=5, eta=1e-3,
                                    batch_size=32, momentum=0.9, seed=11))
    return decode_tensors(result.delta, name="delta")


def test_a_poisoned_node_returns_the_poisoned_delta_of_what_a_clean_node_trains(nodes) -> None:
    data = make_shard(400, seed=5)
    _, clean = nodes()
    flipper_proc, flipper = nodes("--poison", "sign-flip")
    _, noisy = nodes("--poison", "noise")
    _, noisy_twin = nodes("--poison", "noise")  # same --seed 7: same noise for the same task

    honest = trained_delta(clean, data)
    flipped = trained_delta(flipper, data)
    noise = trained_delta(noisy, data)

    assert total_norm(honest) > 0
    for got, want in zip(flipped, honest, strict=True):
        assert got.shape == want.shape
        assert np.array_equal(got, -want)
    assert [n.shape for n in noise] == [h.shape for h in honest]
    assert all(np.isfinite(n).all() for n in noise)
    assert total_norm(noise) == pytest.approx(total_norm(honest), rel=1e-12)
    assert not np.allclose(noise[0], honest[0])
    assert all(np.array_equal(a, b)
               for a, b in zip(trained_delta(noisy_twin, data), noise, strict=True))
    log = flipper_proc.log()
    assert log.count("event=node_poisoned") == 1
    assert "level=WARNING" in log and "mode=sign-flip" in log
