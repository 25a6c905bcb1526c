"""Server strategies, the nodes' schedule, shard sampling and DP noise, each against an
independent numpy computation on small inputs (written from the papers' formulas on flat
vectors, with np.median, np.average, Python's sorted and explicit pairwise distances)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from mlcore import strategies as st
from mlcore.fedavg import fedavg
from mlcore.model import Params, init_params
from mlcore.privacy import clip_update, gaussian_noise, l2_norm, private_mean
from mlcore.schedule import LrSchedule, sample_shards, sample_size

D, H, K = 3, 4, 2


def flat(p: Params) -> np.ndarray:
    return np.concatenate([t.ravel() for t in p.tensors()])


def unflat(vector: np.ndarray, like: Params) -> Params:
    out, at = [], 0
    for t in like.tensors():
        out.append(vector[at:at + t.size].reshape(t.shape))
        at += t.size
    return Params.from_tensors(out)


def make_updates(n: int, seed: int, counts: list[int] | None = None) -> list[tuple[Params, int]]:
    rng = np.random.default_rng(seed)
    base = init_params(D, H, K, seed=1)
    counts = counts or [int(c) for c in rng.integers(1, 50, size=n)]
    return [(unflat(rng.normal(0, 0.1, flat(base).size), base), c) for c in counts]


def assert_bits(a: Params, b: Params) -> None:
    assert flat(a).tobytes() == flat(b).tobytes()


def weighted_mean(updates: list[tuple[Params, int]]) -> np.ndarray:
    return np.average(np.stack([flat(d) for d, _ in updates]), axis=0,
                      weights=[n for _, n in updates])


BASE = init_params(D, H, K, seed=1)


# ------------------------------------------------------------------ FedAvg and the optimisers


def test_fedavg_by_name_is_the_very_fedavg_call() -> None:
    updates = make_updates(5, seed=2)

    new, state = st.aggregate("fedavg", BASE, updates, st.ServerState(), st.StrategyOptions())

    assert_bits(new, fedavg(BASE, updates))
    assert state.slots == {}


def test_fedavgm_without_momentum_and_unit_rate_is_fedavg_bitwise() -> None:
    updates = make_updates(4, seed=3)

    new, _ = st.fedavgm(BASE, updates, st.ServerState(), server_lr=1.0, momentum=0.0)

    assert_bits(new, fedavg(BASE, updates))


def test_fedavgm_matches_server_momentum_over_rounds() -> None:
    params, state = BASE, st.ServerState()
    x, v = flat(BASE), np.zeros(flat(BASE).size)
    for round_no in range(4):
        updates = make_updates(3, seed=10 + round_no)
        params, state = st.fedavgm(params, updates, state, server_lr=0.7, momentum=0.9)
        v = 0.9 * v + weighted_mean(updates)
        x = x + 0.7 * v

    np.testing.assert_allclose(flat(params), x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(flat(state.slots["v"]), v, rtol=1e-12, atol=1e-15)


def reddi(kind: str, rounds: list[list[tuple[Params, int]]], lr: float, b1: float, b2: float,
          tau: float) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, on a flat vector: m_{-1} = 0, v_{-1} = tau^2."""
    x = flat(BASE).copy()
    m = np.zeros_like(x)
    v = np.full_like(x, tau ** 2)
    for updates in rounds:
        g = weighted_mean(updates)
        m = b1 * m + (1 - b1) * g
        if kind == "fedadagrad":
            v = v + g ** 2
        elif kind == "fedyogi":
            v = v - (1 - b2) * g ** 2 * np.sign(v - g ** 2)
        else:
            v = b2 * v + (1 - b2) * g ** 2
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_matches_the_papers_algorithm_over_rounds(kind: str) -> None:
    rounds = [make_updates(3, seed=20 + r) for r in range(4)]
    step = {"fedadam": st.fedadam, "fedyogi": st.fedyogi, "fedadagrad": st.fedadagrad}[kind]
    params, state = BASE, st.ServerState()

    for updates in rounds:
        params, state = step(params, updates, state, server_lr=0.05, beta1=0.8, beta2=0.95,
                             tau=1e-2)

    np.testing.assert_allclose(flat(params), reddi(kind, rounds, 0.05, 0.8, 0.95, 1e-2),
                               rtol=1e-12, atol=1e-15)
    assert sorted(state.slots) == ["m", "v"]


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_by_name_uses_the_options_and_the_default_server_rate(name: str) -> None:
    updates = make_updates(3, seed=4)
    options = st.StrategyOptions(beta1=0.5, tau=0.1, server_momentum=0.3)
    kwargs = ({"server_lr": 1.0, "momentum": 0.3} if name == "fedavgm" else
              {"server_lr": 0.01, "beta1": 0.5, "beta2": 0.99, "tau": 0.1})
    direct = getattr(st, name)(BASE, updates, st.ServerState(), **kwargs)

    by_name = st.aggregate(name, BASE, updates, st.ServerState(), options)

    assert_bits(by_name[0], direct[0])
    assert options.used_by(name)["server_lr"] == kwargs["server_lr"]


def test_stateful_strategy_resumes_bitwise_from_its_saved_state(tmp_path) -> None:
    from mlcore.checkpoint import write_npz

    rounds = [make_updates(3, seed=30 + r) for r in range(4)]
    options = st.StrategyOptions()
    params, state = BASE, st.ServerState()
    for updates in rounds:
        params, state = st.aggregate("fedyogi", params, updates, state, options)
    straight = params

    params, state = BASE, st.ServerState()
    for updates in rounds[:2]:
        params, state = st.aggregate("fedyogi", params, updates, state, options)
    write_npz(tmp_path / "s.npz", {}, state.to_arrays())
    with np.load(tmp_path / "s.npz") as archive:
        state = st.ServerState.from_arrays({k: archive[k] for k in archive.files})
    for updates in rounds[2:]:
        params, state = st.aggregate("fedyogi", params, updates, state, options)

    assert_bits(params, straight)


def test_state_from_arrays_refuses_an_incomplete_slot() -> None:
    arrays = st.ServerState({"v": BASE}).to_arrays()
    del arrays["state_v_b2"]

    with pytest.raises(ValueError, match="slot 'v' is incomplete .missing b2"):
        st.ServerState.from_arrays(arrays)


# ------------------------------------------------------------------ robust aggregation


@pytest.mark.parametrize("n", [1, 4, 5])
def test_median_is_numpys_coordinate_wise_median(n: int) -> None:
    updates = make_updates(n, seed=40 + n)

    new = st.median(BASE, updates)

    want = flat(BASE) + np.median(np.stack([flat(d) for d, _ in updates]), axis=0)
    np.testing.assert_allclose(flat(new), want, rtol=0, atol=1e-15)


def test_median_ignores_a_huge_outlier_and_the_sample_counts() -> None:
    updates = make_updates(5, seed=5)
    poisoned = [*updates[:4], (unflat(np.full(flat(BASE).size, 1e6), BASE), 10_000)]

    new = st.median(BASE, poisoned)

    assert np.abs(flat(new) - flat(BASE)).max() < 1.0


@pytest.mark.parametrize(("n", "fraction"), [(5, 0.0), (5, 0.2), (7, 0.3), (10, 0.45)])
def test_trimmed_mean_matches_sorting_each_coordinate(n: int, fraction: float) -> None:
    updates = make_updates(n, seed=50 + n)
    cut = int(fraction * n)
    columns = np.stack([flat(d) for d, _ in updates]).T

    new = st.trimmed_mean(BASE, updates, fraction=fraction)

    want = [statistics.fmean(sorted(column.tolist())[cut:n - cut]) for column in columns]
    np.testing.assert_allclose(flat(new), flat(BASE) + np.array(want), rtol=1e-12, atol=1e-15)


def test_trimmed_mean_refuses_half_or_more() -> None:
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        st.trimmed_mean(BASE, make_updates(4, seed=1), fraction=0.5)


def krum_by_hand(updates: list[tuple[Params, int]], f: int) -> list[float]:
    vectors = [flat(d) for d, _ in updates]
    n = len(vectors)
    scores = []
    for i in range(n):
        distances = sorted(float(np.linalg.norm(vectors[i] - vectors[j])) ** 2
                           for j in range(n) if j != i)
        scores.append(sum(distances[:n - f - 2]))
    return scores


@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (9, 3)])
def test_krum_picks_the_update_with_the_lowest_score(n: int, f: int) -> None:
    updates = make_updates(n, seed=60 + n)
    want = int(np.argmin(krum_by_hand(updates, f)))

    new = st.krum(BASE, updates, f=f)

    np.testing.assert_allclose(st.krum_scores(updates, f), krum_by_hand(updates, f), rtol=1e-12)
    np.testing.assert_allclose(flat(new), flat(BASE) + flat(updates[want][0]), rtol=0,
                               atol=1e-15)


def test_krum_never_picks_an_outlier() -> None:
    updates = make_updates(7, seed=7)
    updates[2] = (unflat(flat(updates[2][0]) * -100.0, BASE), updates[2][1])
    updates[5] = (unflat(flat(updates[5][0]) + 5.0, BASE), updates[5][1])

    chosen = np.argsort(st.krum_scores(updates, f=2), kind="stable")[:5]

    assert 2 not in chosen and 5 not in chosen


@pytest.mark.parametrize(("n", "f", "m"), [(7, 2, 3), (7, 1, None), (5, 0, 5)])
def test_multi_krum_averages_the_m_best_by_sample_count(n: int, f: int, m: int | None) -> None:
    updates = make_updates(n, seed=70 + n)
    keep = sorted(np.argsort(krum_by_hand(updates, f))[:n - f if m is None else m])

    new = st.multi_krum(BASE, updates, f=f, m=m)

    want = flat(BASE) + weighted_mean([updates[i] for i in keep])
    np.testing.assert_allclose(flat(new), want, rtol=1e-12, atol=1e-15)


def test_multi_krum_keeping_everything_is_fedavg_bitwise() -> None:
    updates = make_updates(6, seed=8)

    assert_bits(st.multi_krum(BASE, updates, f=0, m=6), fedavg(BASE, updates))


def test_krum_needs_more_than_2f_plus_2_updates() -> None:
    with pytest.raises(ValueError, match=r"f=2 .* at least 7 updates .* got 6"):
        st.krum(BASE, make_updates(6, seed=1), f=2)
    with pytest.raises(ValueError, match="m in 1..5"):
        st.multi_krum(BASE, make_updates(5, seed=1), f=1, m=6)


@pytest.mark.parametrize("name", st.STRATEGIES)
def test_every_strategy_is_deterministic_and_leaves_its_inputs_alone(name: str) -> None:
    updates = make_updates(7, seed=9)
    before = [flat(d).copy() for d, _ in updates] + [flat(BASE).copy()]
    options = st.StrategyOptions(krum_f=1)

    first, state = st.aggregate(name, BASE, updates, st.ServerState(), options)
    again, _ = st.aggregate(name, BASE, updates, st.ServerState(), options)

    assert_bits(first, again)
    after = [flat(d) for d, _ in updates] + [flat(BASE)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True))
    assert sorted(state.slots) == sorted(st.STATE_SLOTS.get(name, ()))


@pytest.mark.parametrize("name", st.STRATEGIES)
def test_every_strategy_refuses_non_finite_and_misshapen_updates(name: str) -> None:
    updates = make_updates(5, seed=11)
    bad = flat(updates[1][0]).copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="update 1: delta tensor 0 holds NaN"):
        st.aggregate(name, BASE, [updates[0], (unflat(bad, BASE), 3), *updates[2:]],
                     st.ServerState(), st.StrategyOptions())
    with pytest.raises(ValueError, match="update 0: delta shapes"):
        st.aggregate(name, BASE, [(init_params(D, H + 1, K, seed=1), 1), *updates[1:]],
                     st.ServerState(), st.StrategyOptions())


# ------------------------------------------------------------------ schedule and sampling


def test_schedules_follow_their_formulas() -> None:
    eta, rounds = 0.1, 12
    step = LrSchedule("step", step_rounds=5, gamma=0.5)
    cosine = LrSchedule("cosine", lr_min=0.01)

    got = [(LrSchedule().eta(eta, r, rounds), step.eta(eta, r, rounds),
            cosine.eta(eta, r, rounds)) for r in range(1, rounds + 1)]

    for r, (c, s, cos) in enumerate(got, start=1):
        assert c == eta
        assert s == pytest.approx(eta * {1: 1, 2: 0.5, 3: 0.25}[(r + 4) // 5], rel=1e-15)
        angle = math.pi * (r - 1) / rounds
        assert cos == pytest.approx(0.01 + 0.09 * (1 + math.cos(angle)) / 2, rel=1e-14)
    assert got[0][2] == eta and got[-1][2] > 0.01
    assert all(a[2] > b[2] for a, b in zip(got, got[1:], strict=False))


def test_schedule_check_refuses_what_would_reach_zero() -> None:
    LrSchedule("cosine").check(0.1, 100)  # lr_min 0 never reached
    with pytest.raises(ValueError, match="minimum 0.2 must be in"):
        LrSchedule("cosine", lr_min=0.2).check(0.1, 10)
    with pytest.raises(ValueError, match="round 2000 is 0.0; it must stay > 0"):
        LrSchedule("step", step_rounds=1, gamma=1e-3).check(1e-300, 2000)


def test_sampling_is_a_pure_function_of_seed_and_round() -> None:
    draws = {(seed, r): sample_shards(16, 0.25, seed, r) for seed in (1, 2) for r in range(1, 9)}

    assert draws == {(seed, r): sample_shards(16, 0.25, seed, r) for seed, r in draws}
    for shards in draws.values():
        assert len(shards) == 4 and shards == sorted(set(shards)) and shards[0] >= 0
        assert shards[-1] < 16
    assert len({tuple(s) for s in draws.values()}) > 12  # rounds and seeds differ
    assert sample_shards(16, 1.0, 5, 3) == list(range(16))


def test_sampling_takes_at_least_one_and_covers_every_shard_evenly() -> None:
    assert sample_size(16, 0.01) == 1 and sample_size(16, 0.25) == 4
    assert sample_size(10, 0.34) == 3 and sample_size(3, 0.99) == 3

    counts = np.bincount(np.concatenate([sample_shards(10, 0.3, 7, r) for r in range(1, 2001)]),
                         minlength=10)

    assert counts.sum() == 6000
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)


# ------------------------------------------------------------------ differential privacy


def test_clipping_scales_to_the_norm_and_keeps_the_direction() -> None:
    delta = unflat(np.arange(1.0, flat(BASE).size + 1), BASE)
    norm = math.sqrt(sum(float(x) ** 2 for x in flat(delta)))

    clipped = clip_update(delta, 2.0)

    assert l2_norm(delta) == pytest.approx(norm, rel=1e-14)
    assert np.linalg.norm(flat(clipped)) == pytest.approx(2.0, rel=1e-14)
    np.testing.assert_allclose(flat(clipped), flat(delta) * 2.0 / norm, rtol=1e-14)
    assert clip_update(delta, norm * 1.01) is delta


def test_private_mean_without_noise_is_the_plain_mean_of_clipped_updates() -> None:
    updates = make_updates(5, seed=12)
    clip = 0.5
    vectors = [flat(d) for d, _ in updates]
    clipped = [v * min(1.0, clip / np.linalg.norm(v)) for v in vectors]

    mean = private_mean(BASE, updates, clip=clip, noise_multiplier=0.0, seed=1, round_no=1)

    # Every update counts once: the sample counts do not weigh under DP.
    np.testing.assert_allclose(flat(mean), np.mean(clipped, axis=0), rtol=1e-12, atol=1e-16)


def test_private_mean_adds_seeded_gaussian_noise_of_std_z_times_c_to_the_sum() -> None:
    big = init_params(20, 200, 10, seed=1)  # 6,210 coordinates: enough for the moments
    rng = np.random.default_rng(3)
    updates = [(unflat(rng.normal(0, 1, flat(big).size), big), 1) for _ in range(4)]
    clip, z = 0.3, 1.5
    summed = sum(flat(clip_update(d, clip)) for d, _ in updates)

    mean = private_mean(big, updates, clip=clip, noise_multiplier=z, seed=9, round_no=4)

    noise = flat(mean) * 4 - summed
    assert noise.mean() == pytest.approx(0.0, abs=4 * z * clip / math.sqrt(noise.size))
    assert noise.std() == pytest.approx(z * clip, rel=0.03)
    np.testing.assert_allclose(noise, flat(gaussian_noise(big, z * clip, 9, 4)), atol=1e-12)
    again = private_mean(big, updates, clip=clip, noise_multiplier=z, seed=9, round_no=4)
    assert flat(again).tobytes() == flat(mean).tobytes()
    other = private_mean(big, updates, clip=clip, noise_multiplier=z, seed=9, round_no=5)
    assert np.corrcoef(flat(other) * 4 - summed, noise)[0, 1] < 0.1


def test_server_step_after_a_private_mean_is_the_strategy_on_that_mean() -> None:
    updates = make_updates(3, seed=13)
    mean = private_mean(BASE, updates, clip=1e9, noise_multiplier=0.0, seed=1, round_no=1)
    plain = st.mean_delta(BASE, [(d, 1) for d, _ in updates])

    new, _ = st.server_step("fedadam", BASE, mean, st.ServerState(), st.StrategyOptions())
    want, _ = st.fedopt_step("fedadam", BASE, plain, st.ServerState())

    np.testing.assert_allclose(flat(new), flat(want), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="does not step on a mean"):
        st.server_step("median", BASE, mean, st.ServerState(), st.StrategyOptions())
