"""The coordinator's pure core: nodes file, registry, shard store, round executor."""

from __future__ import annotations

import gc
import hashlib
import threading
import time

import pytest

import coordinator.executor as executor_module
from coordinator.executor import (
    ConfigurationError,
    NodeBusyError,
    NodeFailure,
    NoNodeFinished,
    RoundExecutor,
    TaskRejected,
)
from coordinator.nodes_file import NodesFileError, parse_nodes, read_nodes_file
from coordinator.policies import LoadAware, RandomPolicy, RoundRobin
from coordinator.registry import Registry, RegistryFull
from idl.rpc import Address
from runtime.budget import OutOfTime
from runtime.shard_store import ShardError, ShardStore

# ---------------------------------------------------------------- nodes file


def test_nodes_file_accepts_comments_blank_lines_and_both_separators():
    text = "# cluster\n127.0.0.1,9090\n\n  localhost:9091  # second\n127.0.0.1,9090\n"
    assert parse_nodes(text) == [Address("127.0.0.1", 9090), Address("localhost", 9091)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [("127.0.0.1", "expected host:port"), ("h,99999", "port must be"), (",90", "expected")],
)
def test_nodes_file_bad_line_names_file_and_line(line, reason):
    with pytest.raises(NodesFileError, match=rf"nodes\.txt line 3: .*{reason}"):
        parse_nodes(f"# ok\nh,1\n{line}\n", "nodes.txt")


def test_missing_nodes_file_is_a_clear_error(tmp_path):
    with pytest.raises(NodesFileError, match="cannot read nodes file .*absent.txt"):
        read_nodes_file(tmp_path / "absent.txt")


# ---------------------------------------------------------------- registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_registry_marks_dead_then_reprobes_with_growing_backoff_and_revives():
    clock = FakeClock()
    registry = Registry(probe_interval_s=1.0, max_backoff_s=4.0, clock=clock)
    a = Address("127.0.0.1", 1)
    registry.add(a)
    assert [v.address for v in registry.views()] == ["127.0.0.1:1"]

    backoffs = []
    for _ in range(4):
        registry.mark_dead(a, "connection refused")
        assert registry.views() == []
        assert registry.due_for_probe() == []
        start = clock.now
        while a not in registry.due_for_probe():
            clock.now += 0.25
        backoffs.append(clock.now - start)
    assert backoffs == [1.0, 2.0, 4.0, 4.0]
    assert registry.snapshot()[0].failures == 1  # one transition alive -> dead

    registry.mark_alive(a, {"load_probability": 0.5, "recent_service_s": 2.0})
    [snap] = registry.snapshot()
    assert snap.alive and snap.load_probability == 0.5 and snap.last_seen_s_ago == 0.0
    assert registry.views()[0].service_s == 2.0


def test_registry_tracks_in_flight_and_service_time():
    registry = Registry()
    registry.add(Address("h", 1))
    registry.begin_task("h:1")
    registry.begin_task("h:1")
    assert registry.views()[0].in_flight == 2
    registry.end_task("h:1", 1.0)
    registry.end_task("h:1", None)
    [view] = registry.views()
    [snap] = registry.snapshot()
    assert view.in_flight == 0 and view.service_s == 1.0 and snap.tasks_done == 1


def test_wait_for_alive_wakes_when_a_node_registers():
    registry = Registry()
    threading.Timer(0.1, registry.register, args=(Address("h", 1),)).start()
    began = time.monotonic()
    assert registry.wait_for_alive(5.0)
    assert time.monotonic() - began < 2.0


# ---------------------------------------------------------------- shard store


def test_shard_store_checks_digest_and_reports_missing():
    store = ShardStore()
    data = b"1,2,3\n"
    digest = hashlib.sha256(data).hexdigest()
    assert store.missing([digest, digest]) == [digest]
    with pytest.raises(ShardError, match="hash to"):
        store.put(digest, data + b"x")
    with pytest.raises(ShardError, match="64 lowercase hex"):
        store.put("abc", data)
    store.put(digest, data)
    assert store.get(digest) == data and store.missing([digest]) == []


def test_shard_store_evicts_least_recently_used():
    store = ShardStore(max_bytes=10)
    blobs = [bytes([i]) * 4 for i in range(3)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    store.put(digests[0], blobs[0])
    store.put(digests[1], blobs[1])
    store.get(digests[0])
    store.put(digests[2], blobs[2])
    assert store.missing(digests) == [digests[1]]


# ---------------------------------------------------------------- executor


def make_registry(*ports: int) -> Registry:
    registry = Registry()
    for port in ports:
        registry.add(Address("n", port))
    return registry


def test_executor_returns_outcomes_in_task_order_with_all_tasks_in_flight():
    registry = make_registry(1, 2)
    n_tasks = 12
    barrier = threading.Barrier(n_tasks, timeout=5)

    def call(node, task, timeout_s, may_decline):
        barrier.wait()  # only passes if every task is in flight at once
        time.sleep(0.01 * (n_tasks - task))  # later tasks finish first
        return task * 10

    outcomes = RoundExecutor(registry, call).run(list(range(n_tasks)), RoundRobin(), 10.0)
    assert [o.value for o in outcomes] == [t * 10 for t in range(n_tasks)]
    assert [o.node for o in outcomes] == ["n:1", "n:2"] * (n_tasks // 2)
    assert all(o.attempts == 1 and o.failures == [] for o in outcomes)
    assert all(0 <= o.start_s <= o.end_s for o in outcomes)
    assert [v.in_flight for v in registry.views()] == [0, 0]


def test_failed_node_is_marked_dead_and_task_retried_elsewhere():
    registry = make_registry(1, 2)

    def call(node, task, timeout_s, may_decline):
        if node == "n:1":
            raise NodeFailure("connection refused")
        return node

    executor = RoundExecutor(registry, call)
    outcomes = executor.run(list(range(4)), RoundRobin(), 10.0)
    assert {o.value for o in outcomes} == {"n:2"}
    failed = [o for o in outcomes if o.attempts == 2]
    assert failed and all(o.failures == ["n:1 connection refused"] for o in failed)
    assert [v.address for v in registry.views()] == ["n:2"]
    assert executor.counters.as_dict()["failures"] == len(failed)


def test_busy_nodes_are_retried_until_one_accepts():
    registry = make_registry(1, 2)
    answers = iter([True] * 5)  # the first five calls are declined, whichever node

    def call(node, task, timeout_s, may_decline):
        assert may_decline
        if next(answers, False):
            raise NodeBusyError(retry_after_s=0.01)
        return node

    executor = RoundExecutor(registry, call)
    [outcome] = executor.run([0], LoadAware(), 10.0)
    assert outcome.attempts == 6
    assert outcome.declined == 5 and outcome.failures == []  # a decline is not a failure
    assert len(registry.views()) == 2  # busy is not dead
    assert executor.counters.as_dict()["declined"] == 5
    assert "retries" not in executor.counters.as_dict()


def test_round_fails_after_max_attempts():
    registry = make_registry(1, 2, 3)

    def call(node, task, timeout_s, may_decline):
        raise NodeFailure("reset")

    with pytest.raises(NoNodeFinished, match="failed on 2 attempts"):
        RoundExecutor(registry, call, max_attempts=2).run([0], RandomPolicy(), 10.0)


def test_rejected_task_fails_the_round_with_its_error():
    registry = make_registry(1)

    def call(node, task, timeout_s, may_decline):
        if task == 3:
            raise TaskRejected(ValueError("labels must be < k"))
        return task

    with pytest.raises(TaskRejected, match="labels must be < k"):
        RoundExecutor(registry, call).run(list(range(5)), RoundRobin(), 10.0)


def test_no_nodes_fails_at_the_deadline_not_before_and_not_much_after():
    registry = make_registry()
    began = time.monotonic()
    with pytest.raises(NoNodeFinished, match="deadline of 0.5s .*0 of 0 known nodes alive"):
        RoundExecutor(registry, lambda *a: None).run([0, 1], RoundRobin(), 0.5)
    assert 0.45 <= time.monotonic() - began < 1.5


def test_round_waits_for_a_node_that_comes_back():
    registry = make_registry(1)
    registry.mark_dead("n:1", "refused")
    threading.Timer(0.3, registry.mark_alive, args=("n:1",)).start()
    outcomes = RoundExecutor(registry, lambda node, *a: node).run([0, 1], RoundRobin(), 5.0)
    assert [o.node for o in outcomes] == ["n:1", "n:1"]


def test_call_timeout_never_exceeds_time_left_to_deadline():
    registry = make_registry(1)
    seen = []

    def call(node, task, timeout_s, may_decline):
        seen.append(timeout_s)
        return task

    RoundExecutor(registry, call, task_timeout_s=300).run([0], RoundRobin(), 2.0)
    assert 0 < seen[0] <= 2.0


def test_straggler_is_rerun_on_an_idle_node_and_the_first_result_wins():
    registry = make_registry(1, 2)
    release = threading.Event()
    calls = []

    def call(node, task, timeout_s, may_decline):
        calls.append((task, node))
        if task == 3 and node == "n:2":
            release.wait(5)  # a node that hangs on this task
        return node

    executor = RoundExecutor(registry, call, straggler_factor=4.0, straggler_min_s=0.2)
    began = time.monotonic()
    outcomes = executor.run(list(range(4)), RoundRobin(), 10.0)
    elapsed = time.monotonic() - began
    release.set()

    assert elapsed < 2.0
    assert outcomes[3].node == "n:1"
    assert outcomes[3].failures == ["n:2 straggler, re-run elsewhere"]
    assert (3, "n:2") in calls and (3, "n:1") in calls
    assert executor.counters.as_dict()["stragglers"] == 1
    assert [o.node for o in outcomes[:3]] == ["n:1", "n:2", "n:1"]


def test_straggler_factor_zero_waits_for_the_slow_task():
    registry = make_registry(1, 2)

    def call(node, task, timeout_s, may_decline):
        if task == 3:
            time.sleep(0.5)
        return node

    executor = RoundExecutor(registry, call, straggler_factor=0, straggler_min_s=0.05)
    outcomes = executor.run(list(range(4)), RoundRobin(), 10.0)

    assert outcomes[3].node == "n:2" and outcomes[3].failures == []
    assert "stragglers" not in executor.counters.as_dict()


def test_a_task_only_seconds_late_is_not_rerun():
    registry = make_registry(1, 2)

    def call(node, task, timeout_s, may_decline):
        if task == 3:
            time.sleep(0.5)  # far beyond 4x the median, but under straggler_min_s
        return node

    executor = RoundExecutor(registry, call, straggler_factor=4.0, straggler_min_s=2.0)
    outcomes = executor.run(list(range(4)), RoundRobin(), 10.0)

    assert outcomes[3].failures == [] and "stragglers" not in executor.counters.as_dict()


def test_more_tasks_than_workers_run_in_order_and_free_every_slot(monkeypatch):
    monkeypatch.setattr(executor_module, "MAX_WORKERS", 3)
    registry = make_registry(1, 2, 3)
    running = []
    peak = [0]
    lock = threading.Lock()

    def call(node, task, timeout_s, may_decline):
        with lock:
            running.append(task)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.005)
        with lock:
            running.remove(task)
        return (node, task)

    outcomes = RoundExecutor(registry, call).run(list(range(30)), RoundRobin(), 10.0)
    assert [o.value for o in outcomes] == [(f"n:{1 + t % 3}", t) for t in range(30)]
    assert peak[0] <= 3  # the worker bound holds
    assert [v.in_flight for v in registry.views()] == [0, 0, 0]


def test_a_failed_round_frees_the_slots_of_tasks_no_worker_took(monkeypatch):
    monkeypatch.setattr(executor_module, "MAX_WORKERS", 2)
    registry = make_registry(1, 2)

    def call(node, task, timeout_s, may_decline):
        if task == 1:
            raise TaskRejected(ValueError("bad task"))
        time.sleep(0.05)
        return task

    with pytest.raises(TaskRejected, match="bad task"):
        RoundExecutor(registry, call).run(list(range(40)), RoundRobin(), 10.0)
    deadline = time.monotonic() + 5.0  # the other worker finishes its call, then stops
    while any(v.in_flight for v in registry.views()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [v.in_flight for v in registry.views()] == [0, 0]


def test_rounds_collect_less_often_but_never_turn_the_collector_off():
    before = gc.get_threshold()
    assert gc.isenabled() and before[0] < executor_module.ROUND_GC_THRESHOLD
    registry = make_registry(1)
    seen = []
    release_first = threading.Event()

    def call(node, task, timeout_s, may_decline):
        seen.append((gc.isenabled(), gc.get_threshold()))
        if task == "slow":
            release_first.wait(5.0)
        return task

    executor = RoundExecutor(registry, call)
    slow = threading.Thread(target=executor.run, args=(["slow"], RoundRobin(), 10.0))
    slow.start()
    while not seen:
        time.sleep(0.001)
    executor.run(["quick"], RoundRobin(), 10.0)
    raised = (executor_module.ROUND_GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == raised  # the slow round still runs
    release_first.set()
    slow.join(5.0)
    assert seen == [(True, raised), (True, raised)]
    assert gc.isenabled() and gc.get_threshold() == before

    def reject(node, task, timeout_s, may_decline):
        raise TaskRejected(ValueError("no"))

    with pytest.raises(TaskRejected):
        RoundExecutor(registry, reject).run([0], RoundRobin(), 10.0)
    assert gc.isenabled() and gc.get_threshold() == before


# ---------------------------------------------------------------- time budgets and tokens


def test_task_out_of_time_gets_one_more_node_then_fails_the_round_naming_the_budget():
    registry = make_registry(1, 2, 3, 4, 5)
    calls: list[str] = []

    def call(node, task, timeout_s, may_decline):
        calls.append(node)
        raise OutOfTime(f"{node}: ran out", timeout_s)

    executor = RoundExecutor(registry, call, task_timeout_s=1.5, max_attempts=5)
    with pytest.raises(OutOfTime, match=r"time budget of 1.5s on 2 tries") as caught:
        executor.run([0], RoundRobin(), 10.0)

    assert len(calls) == 2 and len(set(calls)) == 2  # not on every node: once more, elsewhere
    assert "--task-timeout-s (1.5s)" in str(caught.value) and caught.value.budget_s == 1.5
    assert len(registry.views()) == 5  # an answer in time is no node failure
    counters = executor.counters.as_dict()
    assert counters["deadline_exceeded"] == 2 and counters.get("failures", 0) == 0


def test_task_out_of_time_once_then_done_elsewhere_is_a_normal_result():
    registry = make_registry(1, 2)

    def call(node, task, timeout_s, may_decline):
        if node == "n:1":
            raise OutOfTime("slow node", 2.49)  # the node's figure: less after an upload
        return node

    [outcome] = RoundExecutor(registry, call, task_timeout_s=2.5).run([0], RoundRobin(), 10.0)
    assert outcome.value == "n:2" and outcome.attempts == 2
    assert outcome.failures == ["n:1 out of time (2.5s budget)"]


def test_a_node_refusing_the_token_fails_the_round_at_once():
    registry = make_registry(1, 2, 3)
    calls: list[str] = []

    def call(node, task, timeout_s, may_decline):
        calls.append(node)
        raise ConfigurationError(f"node {node} refused the coordinator's token: no")

    executor = RoundExecutor(registry, call)
    with pytest.raises(ConfigurationError, match="node n:1 refused the coordinator's token"):
        executor.run([0], RoundRobin(), 10.0)
    assert calls == ["n:1"]
    assert len(registry.views()) == 3 and "failures" not in executor.counters.as_dict()


def test_registry_bounds_new_registrations_but_not_known_nodes():
    registry = make_registry(1)
    registry.register(Address("n", 2), max_nodes=2)
    registry.register(Address("n", 1), max_nodes=2)  # a heartbeat of a known node
    with pytest.raises(RegistryFull, match=r"already knows 2 nodes.*--max-nodes 2"):
        registry.register(Address("n", 3), max_nodes=2)
    assert [str(a) for a in registry.addresses()] == ["n:1", "n:2"]
