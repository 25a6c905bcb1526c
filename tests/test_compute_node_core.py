"""The compute node's pure core, in-process: load draws, shard store, stats, task checks."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time

import numpy as np
import pytest
from test_compute_node import make_shard

from compute_node.load import LoadConfig, LoadSimulator
from compute_node.node import Busy, ComputeNodeCore, MissingShard, Task
from compute_node.shards import compact_shard, node_store
from compute_node.stats import EMA_ALPHA, NodeStats
from compute_node.trainer import (
    MAX_ACTIVATION_VALUES,
    InvalidTask,
    OutOfTime,
    TrainSettings,
    check_fit,
    params_from_arrays,
    run_training,
    shard_inputs,
)
from idl.tensors import decode_tensors, encode_tensors
from mlcore.data import DataError, Dataset, parse_data
from mlcore.model import init_params, train
from mlcore.standardize import standardize
from runtime.shard_store import ShardError, index_data_dir


def shard_bytes(n_rows: int, seed: int = 0, d: int = 4, k: int = 3) -> bytes:
    return make_shard(n_rows, d=d, k=k, seed=seed)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- load draws -----------------------------------------------------------------------------


def draws(sim: LoadSimulator, n: int, may_decline: bool) -> list[tuple[bool, float]]:
    out = []
    for _ in range(n):
        declined = sim.declines(may_decline)
        out.append((declined, 0.0 if declined else sim.load_delay_s()))
    return out


def test_same_seed_gives_the_same_load_draws():
    config = LoadConfig(load_probability=0.5, load_delay_s=1.0, seed=42)

    first = draws(LoadSimulator(config), 50, may_decline=True)
    second = draws(LoadSimulator(config), 50, may_decline=True)
    other = draws(LoadSimulator(LoadConfig(0.5, 1.0, seed=43)), 50, may_decline=True)

    assert first == second
    assert first != other


def test_decline_and_delay_follow_p_with_separate_draws():
    sim = LoadSimulator(LoadConfig(load_probability=0.3, load_delay_s=2.0, seed=1))

    outcomes = draws(sim, 4000, may_decline=True)

    declined = sum(d for d, _ in outcomes) / len(outcomes)
    accepted_delays = [delay for d, delay in outcomes if not d]
    delayed = sum(delay == 2.0 for delay in accepted_delays) / len(accepted_delays)
    assert declined == pytest.approx(0.3, abs=0.03)
    assert delayed == pytest.approx(0.3, abs=0.03)  # independent of the decline draw
    assert set(accepted_delays) == {0.0, 2.0}


def test_extremes_are_exact():
    always = LoadSimulator(LoadConfig(load_probability=1.0, load_delay_s=0.5, seed=3))
    never = LoadSimulator(LoadConfig(load_probability=0.0, load_delay_s=0.5, seed=3))

    assert all(always.declines(True) for _ in range(200))
    assert all(always.load_delay_s() == 0.5 for _ in range(200))
    assert not any(never.declines(True) for _ in range(200))
    assert all(never.load_delay_s() == 0.0 for _ in range(200))


def test_tasks_that_may_not_be_declined_draw_no_decline():
    config = LoadConfig(load_probability=0.5, load_delay_s=1.0, seed=9)
    plain = LoadSimulator(config)
    asked = LoadSimulator(config)

    delays_plain = [plain.load_delay_s() for _ in range(100)]
    delays_asked = []
    for _ in range(100):
        assert asked.declines(False) is False
        delays_asked.append(asked.load_delay_s())

    assert delays_plain == delays_asked


def test_fault_draws_leave_the_load_draws_unchanged():
    calm = LoadSimulator(LoadConfig(0.5, 1.0, crash_probability=0.0, seed=5))
    faulty = LoadSimulator(LoadConfig(0.5, 1.0, crash_probability=0.5, seed=5))

    calm_draws, faulty_draws, crashes = [], [], []
    for _ in range(100):
        calm_draws.append(calm.load_delay_s())
        calm.crashes()
        faulty_draws.append(faulty.load_delay_s())
        crashes.append(faulty.crashes())

    assert calm_draws == faulty_draws
    assert 20 < sum(crashes) < 80


# --- shard store ----------------------------------------------------------------------------


def test_store_checks_the_digest_and_parses_strictly():
    store = node_store(max_bytes=1 << 20)
    data = shard_bytes(10)

    with pytest.raises(ShardError):
        store.put(sha(data + b"\n"), data)
    with pytest.raises(ShardError):
        store.put("ABC", data)
    with pytest.raises(DataError, match="line 1"):
        store.put(sha(b"1,2,x\n"), b"1,2,x\n")
    assert store.get(sha(data)) is None

    dataset = store.put(sha(data), data)

    assert store.get(sha(data)) is dataset
    assert dataset.n_rows == 10


def test_cache_evicts_least_recently_used_within_its_bound():
    shards = [shard_bytes(100, seed=i) for i in range(3)]
    one_size = 100 * 4 + 100  # cached compactly: x uint8 (100, 4) + y uint8 (100,)
    store = node_store(max_bytes=2 * one_size)
    store.put(sha(shards[0]), shards[0])
    store.put(sha(shards[1]), shards[1])
    assert store.get(sha(shards[0])) is not None  # 0 is now the most recently used

    store.put(sha(shards[2]), shards[2])

    assert store.missing([sha(s) for s in shards]) == [sha(shards[1])]


def test_newest_shard_stays_even_when_alone_over_the_bound():
    store = node_store(max_bytes=10)
    small, big = shard_bytes(5, seed=1), shard_bytes(50, seed=2)
    store.put(sha(small), small)

    store.put(sha(big), big)

    assert store.missing([sha(small), sha(big)]) == [sha(small)]


def test_data_dir_index_holds_only_regular_files_inside(tmp_path):
    root = tmp_path / "data"
    (root / "nested").mkdir(parents=True)
    inside, nested, hidden, outside = (shard_bytes(5, seed=i) for i in range(4))
    (root / "train_1.txt").write_bytes(inside)
    (root / "nested" / "train_2.txt").write_bytes(nested)
    (root / ".hidden.txt").write_bytes(hidden)
    (tmp_path / "outside.txt").write_bytes(outside)
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (root / "loop").symlink_to(tmp_path)

    index = index_data_dir(root)

    assert set(index) == {sha(inside), sha(nested)}


def test_data_dir_file_changed_after_startup_is_no_longer_served(tmp_path):
    data = shard_bytes(5)
    path = tmp_path / "train_1.txt"
    path.write_bytes(data)
    store = node_store(max_bytes=1 << 20, data_dir=tmp_path)
    assert store.missing([sha(data)]) == []

    path.write_bytes(shard_bytes(6))

    assert store.get(sha(data)) is None
    assert store.missing([sha(data)]) == [sha(data)]


# --- stats and task checks ------------------------------------------------------------------


def test_service_time_is_a_moving_average_of_finished_tasks():
    stats = NodeStats()
    stats.started()
    stats.started()
    assert stats.snapshot().tasks_in_flight == 2

    stats.finished(1.0)
    stats.finished(None)  # failed: leaves the average alone
    stats.started()
    stats.finished(2.0)
    stats.declined()

    snap = stats.snapshot()
    assert snap.recent_service_s == pytest.approx(EMA_ALPHA * 2.0 + (1 - EMA_ALPHA) * 1.0)
    assert (snap.tasks_in_flight, snap.tasks_done, snap.tasks_declined) == (0, 2, 1)


def test_task_too_large_for_memory_is_invalid():
    params = init_params(2, 1000, 3, seed=1)
    n_rows = MAX_ACTIVATION_VALUES // 1003 + 1
    huge = Dataset(x=np.zeros((n_rows, 2)), y=np.zeros(n_rows, dtype=np.int64))

    with pytest.raises(InvalidTask, match="too large"):
        check_fit(params, huge, "huge")


def make_core(p: float, crash_probability: float = 0.0) -> tuple[ComputeNodeCore, list[int]]:
    crashes: list[int] = []
    core = ComputeNodeCore(
        node_store(1 << 20),
        LoadSimulator(LoadConfig(p, 0.0, crash_probability=crash_probability, seed=1)),
        crash=lambda: crashes.append(1),
    )
    return core, crashes


def task_for(data: bytes, may_decline: bool = False) -> Task:
    return Task(
        digest=sha(data),
        shard_name="t",
        weights=init_params(4, 5, 3, seed=1).tensors(),
        settings=TrainSettings(epochs=2, eta=1e-3),
        may_decline=may_decline,
    )


def test_core_checks_shard_before_load_and_counts_declines():
    core, _ = make_core(p=1.0)
    data = shard_bytes(20)

    with pytest.raises(MissingShard):
        core.train(task_for(data, may_decline=True))
    assert core.load_snapshot().tasks_declined == 0  # no draw for a task that could not run
    core.put_shard(sha(data), data)
    with pytest.raises(Busy):
        core.train(task_for(data, may_decline=True))

    assert core.load_snapshot().tasks_declined == 1


def test_injected_crash_happens_after_training_before_the_reply():
    core, crashes = make_core(p=0.0, crash_probability=1.0)
    data = shard_bytes(20)
    core.put_shard(sha(data), data)

    report = core.train(task_for(data))  # the stand-in crash returns instead of exiting

    assert crashes == [1]
    assert report.output.n_samples == 20


def test_task_that_cannot_get_a_worker_within_its_timeout_is_turned_away():
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(1.0, 0.5, seed=1)))
    data = shard_bytes(20)
    core.put_shard(sha(data), data)
    outcomes: list[str] = []

    def run(timeout_s: float) -> None:
        try:
            core.train(dataclasses.replace(task_for(data), timeout_s=timeout_s))
            outcomes.append("done")
        except Busy as exc:
            outcomes.append(f"busy: {exc}")

    # The first task holds the single worker for its 0.5 s load delay (within its budget).
    holder = threading.Thread(target=run, args=(5.0,))
    holder.start()
    while core.load_snapshot().tasks_in_flight == 0 and holder.is_alive():
        threading.Event().wait(0.005)
    waiter = threading.Thread(target=run, args=(0.1,))
    waiter.start()
    for t in (holder, waiter):
        t.join(timeout=10)

    assert sorted(outcomes) == ["busy: no free worker within the task's timeout of 0.1s", "done"]
    snap = core.load_snapshot()
    assert (snap.tasks_done, snap.tasks_declined, snap.tasks_in_flight) == (1, 1, 0)


def test_task_budget_bounds_the_load_delay_and_training():
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(1.0, 5.0, seed=1)))
    data = shard_bytes(20)
    core.put_shard(sha(data), data)
    task = dataclasses.replace(task_for(data), timeout_s=0.2)

    began = time.monotonic()
    with pytest.raises(OutOfTime, match="time budget of 0.2s") as caught:
        core.train(task)  # a 5 s load delay: cut at the budget, then training never starts

    assert time.monotonic() - began < 1.0
    assert caught.value.budget_s == 0.2
    snap = core.load_snapshot()
    assert (snap.tasks_done, snap.tasks_in_flight) == (0, 0)


def test_task_beyond_the_work_bound_is_refused_naming_it():
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(0.0, 0.0, seed=1)),
                           max_task_work=1000)
    data = shard_bytes(20)
    core.put_shard(sha(data), data)
    task = task_for(data)
    n_params = sum(w.size for w in task.weights)
    work = task.settings.epochs * 20 * n_params

    with pytest.raises(InvalidTask, match=f"= {work:,} exceeds the node's bound of 1,000 "
                                          r"\(--max-task-work\)"):
        core.train(task)
    assert core.load_snapshot().tasks_in_flight == 0


# --- compact shards, one float64 array per task, deltas from read-only weights ---------------


@pytest.mark.parametrize(
    ("high", "label_high", "x_dtype", "y_dtype"),
    [(15, 25, np.uint8, np.uint8), (-300, 25, np.int16, np.uint8),
     (70_000, 40_000, np.uint32, np.uint16), (2**40, 3, np.float64, np.uint8)],
)
def test_cached_shards_use_the_smallest_dtype_that_holds_their_values(
    high, label_high, x_dtype, y_dtype
):
    rng = np.random.default_rng(5)
    x = rng.integers(min(0, high), max(0, high) + 1, (50, 3))
    x[0, 0] = high
    y = rng.integers(0, label_high + 1, 50)
    y[0] = label_high
    text = "".join(",".join(map(str, [*r, label])) + "\n" for r, label in zip(x, y, strict=True))
    parsed = parse_data(text.encode(), "t")

    shard = compact_shard(parsed)

    assert shard.x.dtype == x_dtype and shard.y.dtype == y_dtype
    widened = shard.x.astype(np.float64)
    assert widened.tobytes() == parsed.x.tobytes()
    assert np.array_equal(shard.y, parsed.y)


def test_task_rows_from_compact_integers_are_bitwise_the_float64_ones():
    data = shard_bytes(200, seed=7)
    parsed = parse_data(data, "t")
    shard = compact_shard(parsed)
    assert shard.x.dtype == np.uint8
    shift, scale = (7.25, 7.5, 7.0, 8.125), (0.3, 0.21, 0.19, 0.27)

    plain = shard_inputs(shard, TrainSettings(epochs=1, eta=1.0))
    scaled = shard_inputs(shard, TrainSettings(epochs=1, eta=1.0, feature_shift=shift,
                                               feature_scale=scale))

    assert plain.dtype == np.float64 and plain.tobytes() == parsed.x.tobytes()
    assert scaled.tobytes() == standardize(parsed.x, shift, scale).tobytes()
    with pytest.raises(InvalidTask, match="feature_shift"):
        shard_inputs(shard, TrainSettings(epochs=1, eta=1.0, feature_shift=(1.0,),
                                          feature_scale=(1.0,)))


def test_delta_from_read_only_wire_weights_is_bitwise_new_minus_given():
    data = shard_bytes(120, seed=8)
    parsed = parse_data(data, "t")
    params = init_params(4, 6, 3, seed=2)
    given = [t.copy() for t in params.tensors()]
    views = decode_tensors(encode_tensors(params.tensors()), writable=False)
    assert not any(v.flags.writeable for v in views)
    settings = TrainSettings(epochs=3, eta=0.01, batch_size=16, momentum=0.5, seed=4)

    out = run_training(params_from_arrays(views), compact_shard(parsed), settings)

    expected = train(params, parsed.x, parsed.y, epochs=3, eta=0.01, batch_size=16,
                     momentum=0.5, seed=4)
    for delta, new, old in zip(out.delta, expected.params.tensors(), given, strict=True):
        assert delta.tobytes() == (new - old).tobytes()
    assert all(v.tobytes() == g.tobytes() for v, g in zip(views, given, strict=True))
    assert out.loss == expected.loss and out.n_samples == 120
