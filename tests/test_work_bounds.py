"""Work is bounded: a task's time budget stops training, and oversized requests are refused.

Unit level: mlcore's time limit (same bits when it does not bite), the coordinator's work
check. Real processes: a poison task (two billion epochs, a 1 s budget) ends on every node
it reaches within its budget plus a small margin, with the declared DeadlineExceeded, and
the coordinator tries it on two nodes, not on all of them; requests beyond the work bound
get InvalidRequest naming it, at the coordinator and at the node.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from coordinator.validation import RequestError, check_request
from harness import ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from idl.gen.ttypes import (
    DeadlineExceeded,
    InvalidRequest,
    RoundRequest,
    ShardRef,
    ShardTask,
    TrainConfig,
)
from idl.rpc import connect
from idl.tensors import encode_tensors
from mlcore.model import TrainingTimeout, init_params, train

D, H, K = 4, 3, 3
N_PARAMS = D * H + H + H * K + K  # 27
ROWS = 24
SHARD = b"".join(f"{i % 16},{(3 * i) % 16},{(5 * i) % 16},{(7 * i) % 16},{i % K}\n".encode()
                 for i in range(ROWS))
DIGEST = hashlib.sha256(SHARD).hexdigest()
POISON_EPOCHS = 2_000_000_000  # i32; 2e9 x 24 x 27 = 1.3e12: under the work bound, hours long
BUDGET_S = 1.0
MARGIN_S = 0.5  # a node's stop (~0.1 ms granularity) and its reply, on a busy 2-core machine


def weights() -> list:
    rng = np.random.default_rng(1)
    return encode_tensors([rng.uniform(-0.01, 0.01, s) for s in [(D, H), (H,), (H, K), (K,)]])


def request(epochs: int, *, n_rows: int = ROWS, batch_size: int = 0) -> RoundRequest:
    ref = ShardRef(name="train_0.txt", digest=DIGEST, n_rows=n_rows, n_bytes=len(SHARD))
    return RoundRequest(job_id="bounds", round=1, weights=weights(), shards=[ref],
                        config=TrainConfig(epochs=epochs, eta=1e-6, batch_size=batch_size),
                        deadline_s=60.0)


def task(epochs: int, timeout_s: float) -> ShardTask:
    r = request(epochs)
    return ShardTask(job_id="bounds", round=1, shard_index=0, shard=r.shards[0],
                     weights=r.weights, config=r.config, timeout_s=timeout_s)


def call(proc: ServerProcess, service, fn: Callable, timeout_s: float = 30.0):
    conn = connect(service.Client, proc.address, timeout_s)
    try:
        return fn(conn.client)
    finally:
        conn.close()


def events(proc: ServerProcess, name: str) -> list[dict[str, str]]:
    """The key=value fields of every `name` event in a server's log."""
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in proc.log().splitlines()
            if f"event={name} " in line or line.endswith(f"event={name}")]


# ------------------------------------------------------------------------------ unit level


@pytest.mark.parametrize(("batch_size", "momentum"), [(0, 0.0), (7, 0.9), (1, 0.0)])
def test_a_time_limit_that_does_not_bite_changes_no_bit(batch_size, momentum):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.integers(0, 26, 200)
    params = init_params(16, 24, 26, seed=1)

    free = train(params, x, y, epochs=5, eta=1e-3, batch_size=batch_size, momentum=momentum)
    limited = train(params, x, y, epochs=5, eta=1e-3, batch_size=batch_size, momentum=momentum,
                    time_limit_s=600.0)

    for a, b in zip(free.params.tensors(), limited.params.tensors(), strict=True):
        assert a.tobytes() == b.tobytes()
    assert (free.loss, free.error) == (limited.loss, limited.error)


@pytest.mark.parametrize("batch_size", [0, 1, 32])
def test_a_time_limit_stops_training_between_steps(batch_size):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 16)), rng.integers(0, 26, 500)
    params = init_params(16, 24, 26, seed=1)

    began = time.monotonic()
    with pytest.raises(TrainingTimeout, match="time limit of 0.2s") as caught:
        train(params, x, y, epochs=POISON_EPOCHS, eta=1e-6, batch_size=batch_size,
              time_limit_s=0.2)

    assert 0.2 <= time.monotonic() - began < 0.2 + MARGIN_S
    assert 0 < caught.value.epochs_done < POISON_EPOCHS


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1"])
def test_a_time_limit_must_be_positive_and_finite(bad):
    params = init_params(2, 2, 2, seed=1)
    with pytest.raises(ValueError, match="time_limit_s"):
        train(params, np.zeros((2, 2)), np.array([0, 1]), epochs=1, eta=0.1, time_limit_s=bad)


def test_the_coordinator_refuses_work_beyond_the_bound_naming_it():
    with pytest.raises(RequestError, match=r"= 43,200 exceeds the bound of 10,000 per task "
                                           r"\(--max-task-work\)"):
        check_request(request(epochs=100, n_rows=16), max_task_work=10_000)
    check_request(request(epochs=100, n_rows=16), max_task_work=43_200)  # at the bound: fine


def test_the_default_bound_leaves_every_known_workload_far_below_it():
    """The seed's workload, the benchmarks' biggest tasks and the tests' poison task."""
    letters = 16 * 24 + 24 + 24 * 26 + 26  # d=16, h=24, k=26
    workloads = {
        "seed: 75 epochs, 16 shards of 20,000 rows": 75 * 1250 * letters,
        "bench_scale data: 5 epochs, 1M rows in 16 shards": 5 * 62_500 * letters,
        "bench_scale model: ~10M parameters, 4 rows, 1 epoch": 1 * 4 * 10_500_000,
        "time to accuracy: 5 epochs, h=256, 4,000-row shards":
            5 * 4000 * (16 * 256 + 256 + 256 * 26 + 26),
        "poison task of these tests": POISON_EPOCHS * ROWS * N_PARAMS,
    }
    for name, work in workloads.items():
        assert work * 5 <= DEFAULT_MAX_TASK_WORK, name


# ------------------------------------------------------------------------- real processes


@pytest.mark.parametrize("batch_size", [0, 4])
def test_a_poison_task_ends_within_its_budget_and_is_not_retried_on_every_node(
    make_cluster, batch_size
):
    cluster = make_cluster(nodes=3, coordinator_args=("--task-timeout-s", str(BUDGET_S),
                                                      "--max-attempts", "5"))
    coordinator = cluster.coordinator
    call(coordinator, Coordinator, lambda c: c.put_shard(DIGEST, SHARD, ""))

    began = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        call(coordinator, Coordinator,
             lambda c: c.run_round(request(POISON_EPOCHS, batch_size=batch_size)))
    elapsed = time.monotonic() - began

    assert caught.value.budget_s == pytest.approx(BUDGET_S, abs=0.01)
    assert "time budget of 1s on 2 tries" in caught.value.message
    assert "--task-timeout-s" in caught.value.message
    assert 2 * BUDGET_S <= elapsed < 2 * (BUDGET_S + MARGIN_S)
    # Every node that got it stopped on its own, within the budget, and is free again now.
    stopped = [e for node in cluster.nodes for e in events(node, "task_out_of_time")]
    assert len(stopped) == 2
    assert all(float(e["total_s"]) < BUDGET_S + MARGIN_S for e in stopped)
    for node in cluster.nodes:
        assert call(node, ComputeNode, lambda c: c.load("")).tasks_in_flight == 0
    counters = call(coordinator, Coordinator, lambda c: c.status("")).counters
    assert counters["deadline_exceeded"] == 2 and counters["retries"] == 1
    assert counters.get("failures", 0) == 0 and counters["nodes_alive"] == 3


def test_a_node_gives_up_on_its_own_and_keeps_answering_meanwhile(make_cluster):
    cluster = make_cluster(nodes=1)
    node = cluster.nodes[0]
    call(node, ComputeNode, lambda c: c.put_shard(DIGEST, SHARD, ""))
    outcome: list[BaseException] = []

    def poison() -> None:
        try:
            call(node, ComputeNode, lambda c: c.train(task(POISON_EPOCHS, 0.8)))
        except DeadlineExceeded as exc:
            outcome.append(exc)

    began = time.monotonic()
    worker = threading.Thread(target=poison)
    worker.start()
    while call(node, ComputeNode, lambda c: c.load("")).tasks_in_flight == 0:
        assert worker.is_alive(), "the task ended before it was seen in flight"
    pinged = time.monotonic()
    assert call(node, ComputeNode, lambda c: c.ping(), timeout_s=2.0) is True
    assert time.monotonic() - pinged < 0.2  # training holds no GIL
    worker.join(10)

    assert time.monotonic() - began < 0.8 + MARGIN_S
    [late] = outcome
    assert late.budget_s == pytest.approx(0.8) and "time budget of 0.8s" in late.message


def test_the_coordinator_refuses_an_oversized_request_before_any_node_sees_it(make_cluster):
    cluster = make_cluster(nodes=1)
    coordinator = cluster.coordinator
    call(coordinator, Coordinator, lambda c: c.put_shard(DIGEST, SHARD, ""))

    with pytest.raises(InvalidRequest) as caught:  # 2e9 x 1e6 x 27 = 5.4e16 claimed
        call(coordinator, Coordinator,
             lambda c: c.run_round(request(POISON_EPOCHS, n_rows=1_000_000)))

    assert f"exceeds the bound of {DEFAULT_MAX_TASK_WORK:,} per task" in caught.value.message
    assert "--max-task-work" in caught.value.message
    assert call(cluster.nodes[0], ComputeNode, lambda c: c.load("")).tasks_done == 0


def test_the_node_refuses_work_beyond_its_bound_even_when_the_coordinator_was_told_less(
    make_cluster,
):
    cluster = make_cluster(nodes=1, node_args=("--load-delay", "0", "--max-task-work", "100000"))
    coordinator, node = cluster.coordinator, cluster.nodes[0]
    call(coordinator, Coordinator, lambda c: c.put_shard(DIGEST, SHARD, ""))
    call(node, ComputeNode, lambda c: c.put_shard(DIGEST, SHARD, ""))
    work = 2000 * ROWS * N_PARAMS  # 1,296,000 on the node's real rows

    with pytest.raises(InvalidRequest) as direct:
        call(node, ComputeNode, lambda c: c.train(task(2000, 30.0)))
    with pytest.raises(InvalidRequest) as via_coordinator:  # the client claims 1 row
        call(coordinator, Coordinator, lambda c: c.run_round(request(2000, n_rows=1)))

    for caught in (direct, via_coordinator):
        assert f"= {work:,} exceeds the node's bound of 100,000" in caught.value.message
        assert "--max-task-work" in caught.value.message
    assert call(node, ComputeNode, lambda c: c.load("")).tasks_done == 0
