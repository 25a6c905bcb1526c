"""Work stealing: no task waits on a busy node while a healthy node is idle.

The decision (coordinator.stealing) is pure and tested without processes; the executor's
part with plain functions for nodes; the whole with real processes: one node held in a
30 s load delay (p = 1) beside free ones, a round that finishes in far less than the delay,
with the steals counted, and the model bit for bit that of a run on the free nodes alone.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for
from test_training_e2e import model_bytes, run_client

from client.timing import read_timing
from coordinator.executor import Counters, NodeBusyError, RoundExecutor, TaskCancelledError
from coordinator.policies import LoadAware, NodeView, RoundRobin
from coordinator.registry import Registry
from coordinator.stealing import Steal, Waiting, plan_steals, wait_limit_s
from harness import LocalCluster, ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.rpc import Address, connect

# ------------------------------------------------------------------ the pure decision


def test_nothing_is_stolen_without_an_idle_node() -> None:
    nodes = [NodeView("a", in_flight=3), NodeView("b", in_flight=1)]
    waiting = [Waiting(0, "a", 5.0), Waiting(1, "a", 5.0), Waiting(2, "b", 5.0)]
    assert plan_steals(nodes, waiting, 0.2, 0.4) == []


def test_an_idle_node_takes_a_task_from_the_most_crowded_node() -> None:
    nodes = [NodeView("a", in_flight=1), NodeView("b", in_flight=3), NodeView("c")]
    waiting = [Waiting(0, "a", 3.0), Waiting(1, "b", 3.0), Waiting(2, "b", 2.0),
               Waiting(3, "b", 1.0)]
    # the latest sent to b (likely last in its queue) goes to the idle c
    assert plan_steals(nodes, waiting, 0.2, 0.4) == [Steal(3, "b", "c")]


def test_one_steal_per_idle_node_spread_over_the_busy_ones() -> None:
    nodes = [NodeView("a", in_flight=2), NodeView("b", in_flight=2), NodeView("c"),
             NodeView("d")]
    waiting = [Waiting(0, "a", 1.0), Waiting(1, "a", 0.9), Waiting(2, "b", 1.0),
               Waiting(3, "b", 0.8)]
    plan = plan_steals(nodes, waiting, 0.2, 0.4)
    # equally crowded: the latest sent first (b's), then a's, a node each
    assert [(s.index, s.source, s.target) for s in plan] == [(3, "b", "c"), (1, "a", "d")]
    assert all(not s.duplicate for s in plan)


def test_the_least_loaded_idle_node_takes_first() -> None:
    nodes = [NodeView("a", in_flight=3), NodeView("b", load_probability=0.9),
             NodeView("c", load_probability=0.2)]
    waiting = [Waiting(0, "a", 1.0), Waiting(1, "a", 0.9)]
    assert [s.target for s in plan_steals(nodes, waiting, 0.2, 0.4)] == ["c", "b"]
    timed = [NodeView("a", in_flight=3), NodeView("b", service_s=0.5),
             NodeView("c", service_s=0.1)]
    assert [s.target for s in plan_steals(timed, waiting, 0.2, 0.4)] == ["c", "b"]


def test_a_task_moves_only_if_it_has_waited_longer_than_the_idle_node_would_take() -> None:
    # a cancelled task starts over on the target, load delay draw and all
    nodes = [NodeView("a", in_flight=2), NodeView("b", service_s=1.0)]
    assert plan_steals(nodes, [Waiting(0, "a", 1.1)], 0.2, 0.4) == []
    assert plan_steals(nodes, [Waiting(0, "a", 1.3)], 0.2, 0.4) == [Steal(0, "a", "b")]


def test_a_task_waits_its_limit_before_it_is_taken() -> None:
    nodes = [NodeView("a", in_flight=2), NodeView("b")]
    assert plan_steals(nodes, [Waiting(0, "a", 0.1)], 0.2, 0.4) == []
    assert plan_steals(nodes, [Waiting(0, "a", 0.3)], 0.2, 0.4) == [Steal(0, "a", "b")]


def test_a_started_task_is_duplicated_past_its_limit_never_cancelled() -> None:
    nodes = [NodeView("a", in_flight=1), NodeView("b")]
    assert plan_steals(nodes, [Waiting(0, "a", 0.3, started=True)], 0.2, 0.4) == []
    assert plan_steals(nodes, [Waiting(0, "a", 0.5, started=True)], 0.2, 0.4) == [
        Steal(0, "a", "b", duplicate=True)]
    # at most one copy of a task
    assert plan_steals(nodes, [Waiting(0, "a", 5.0, started=True, duplicated=True)],
                       0.2, 0.4) == []


def test_a_task_declined_everywhere_is_woken_for_an_idle_node_after_the_cancels() -> None:
    nodes = [NodeView("a", in_flight=2), NodeView("b"), NodeView("c")]
    plan = plan_steals(nodes, [Waiting(0, "a", 1.0)], 0.2, 0.4, backing_off=[5, 6])
    assert plan == [Steal(0, "a", "b"), Steal(5, "", "c", wake=True)]
    # an idle node nobody is stealing for goes to a task that backs off before a copy
    started = [Waiting(0, "a", 9.0, started=True)]
    assert plan_steals(nodes[:2], started, 0.2, 0.4, backing_off=[5]) == [
        Steal(5, "", "b", wake=True)]
    assert plan_steals([NodeView("a", in_flight=1)], [], 0.2, 0.4, backing_off=[5]) == []


def test_a_task_on_a_dead_node_is_left_to_the_failure_path() -> None:
    assert plan_steals([NodeView("b")], [Waiting(0, "a", 9.0)], 0.2, 0.4) == []


def test_the_limit_follows_the_round_s_finished_tasks() -> None:
    assert wait_limit_s([], [], 2.0, 0.05) == 0.05
    assert wait_limit_s([0.01, 0.02, 0.03], [0.001], 2.0, 0.05) == 0.05
    assert wait_limit_s([1.0, 3.0, 2.0], [0.001], 2.0, 0.05) == 4.0
    # across a WAN the round trip is what a steal costs: 200 ms RTT, twice
    assert wait_limit_s([0.03, 0.03], [0.2, 0.21], 2.0, 0.05) == pytest.approx(0.42)


# ------------------------------------------------------------------ the executor, no processes


class HeldNode:
    """Call functions for nodes: tasks sent to `held` wait (as in a load delay) until
    cancelled; the other nodes answer at once."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.lock = threading.Lock()
        self.waiting: dict[int, threading.Event] = {}
        self.ran: dict[int, str] = {}

    def call(self, node: str, task: int, timeout_s: float, may_decline: bool) -> int:
        if node == self.held:
            event = threading.Event()
            with self.lock:
                self.waiting[task] = event
            event.wait(timeout_s)
            raise TaskCancelledError("cancelled")
        with self.lock:
            self.ran[task] = node
        return task * 10

    def cancel(self, node: str, task: int, timeout_s: float) -> bool:
        with self.lock:
            event = self.waiting.pop(task, None) if node == self.held else None
        if event is None:
            return False
        event.set()
        return True


def test_the_executor_moves_tasks_off_a_held_node_to_idle_ones() -> None:
    registry = Registry()
    for port in (1, 2, 3):
        registry.add(Address("127.0.0.1", port))
    nodes = HeldNode("127.0.0.1:1")
    counters = Counters()
    executor = RoundExecutor(registry, nodes.call, counters=counters, cancel_node=nodes.cancel,
                             steal_min_s=0.05)
    started = time.monotonic()
    outcomes = executor.run(list(range(9)), RoundRobin(), 60.0)
    assert time.monotonic() - started < 10.0
    assert [o.value for o in outcomes] == [i * 10 for i in range(9)]
    assert all(o.node != "127.0.0.1:1" for o in outcomes)
    assert counters.as_dict()["steals"] == 3  # round-robin gave the held node 3 of 9
    assert "failures" not in counters.as_dict()
    assert all(v.in_flight == 0 for v in registry.views())  # every reservation released


def test_without_cancel_nothing_is_stolen() -> None:
    registry = Registry()
    for port in (1, 2):
        registry.add(Address("127.0.0.1", port))
    nodes = HeldNode("127.0.0.1:9")  # holds nothing
    counters = Counters()
    executor = RoundExecutor(registry, nodes.call, counters=counters)
    assert [o.value for o in executor.run([1, 2, 3], RoundRobin(), 10.0)] == [10, 20, 30]
    assert "steals" not in counters.as_dict()


def test_an_idle_node_that_declines_is_asked_again_at_once() -> None:
    """A decline is one draw: with nothing else for it to do, the idle node is asked again
    without a backoff (0.05 + 0.1 + 0.2 s for three declines), nor a wake from one."""
    registry = Registry()
    registry.add(Address("127.0.0.1", 1))
    asks: list[int] = []

    def call(node: str, task: int, timeout_s: float, may_decline: bool) -> int:
        asks.append(task)
        if len(asks) <= 3:
            raise NodeBusyError("loaded")
        return task

    counters = Counters()
    executor = RoundExecutor(registry, call, counters=counters,
                             cancel_node=lambda node, task, timeout_s: False)
    started = time.monotonic()
    assert [o.value for o in executor.run([7], LoadAware(), 10.0)] == [7]
    assert time.monotonic() - started < 0.25
    assert counters.as_dict()["declined"] == 3 and len(asks) == 4
    assert "steal_wakes" not in counters.as_dict()


# ------------------------------------------------------------------ real processes

ARGS = ["2", "10", "24", "1e-4"]  # 2 rounds of 10 epochs, h = 24: 16 shards of 0.1 s or so
DELAY_S = 30.0


def counters_of(coordinator: ServerProcess) -> dict[str, int]:
    conn = connect(Coordinator.Client, coordinator.address, timeout_s=5.0)
    try:
        return dict(conn.client.status("").counters or {})
    finally:
        conn.close()


def cancel_on(node: ServerProcess, task_id: str) -> bool:
    conn = connect(ComputeNode.Client, node.address, timeout_s=5.0)
    try:
        return conn.client.cancel(task_id, "")
    finally:
        conn.close()


@pytest.mark.slow
def test_no_task_waits_on_a_node_held_in_a_long_load_delay(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "reference") as ref:
        for _ in range(2):
            ref.add_node(0.0, "--load-delay-s", "0")
        done = run_client(ref.add_coordinator("round-robin"), tmp_path / "ref", train_args=ARGS)
        assert done.returncode == 0, done.stderr
    reference = model_bytes(tmp_path / "ref" / "model.npz")

    with LocalCluster(tmp_path / "cluster") as cluster:
        held = cluster.add_node(1.0, "--load-delay-s", str(DELAY_S))  # every task sleeps 30 s
        for _ in range(2):
            cluster.add_node(0.0, "--load-delay-s", "0")
        coordinator = cluster.add_coordinator("round-robin")
        started = time.monotonic()
        done = run_client(coordinator, tmp_path / "run", train_args=ARGS, timeout_s=120.0)
        wall_s = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert wall_s < DELAY_S / 2, f"the job took {wall_s:.1f}s"
        rounds = [r for r in read_timing(tmp_path / "run" / "timing.txt")[1]
                  if r["kind"] == "round"]
        assert len(rounds) == 2
        assert all(float(r["round_s"]) < DELAY_S / 6 for r in rounds), rounds
        counters = counters_of(coordinator)
        # round-robin sends a third of each round's 16 tasks to the held node: all taken back
        assert counters.get("steals", 0) >= 2 * 5, counters
        assert "failures" not in counters, counters
        assert model_bytes(tmp_path / "run" / "model.npz") == reference
        # the held node ran none of them: its cancelled tasks answered, nothing is in flight
        wait_for(lambda: load_of(held).tasks_in_flight == 0, "the held node to be empty")
        assert load_of(held).tasks_done == 0
        # hostile or late cancels are no-op answers, and the node keeps serving
        assert cancel_on(held, "no-such-task") is False
        assert cancel_on(held, "x" * 100_000) is False
        assert cancel_on(held, "") is False
        assert load_of(held).tasks_in_flight == 0


def load_of(node: ServerProcess):
    conn = connect(ComputeNode.Client, node.address, timeout_s=5.0)
    try:
        return conn.client.load("")
    finally:
        conn.close()
