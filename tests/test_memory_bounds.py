"""What keeps a model's bytes alive in the coordinator: nothing past the attempt that used them.

The peak-memory figures themselves are measured by scripts/bench_scale.py --part model;
these tests pin down the mechanisms: every attempt sends its own request object (a
straggler's copy never shares a mutable one), and a declared error from a node leaves no
reference cycle holding the attempt's request until the collector happens to run.
"""

from __future__ import annotations

import gc
import hashlib
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from compute_node.handler import ComputeNodeHandler
from compute_node.load import LoadConfig, LoadSimulator
from compute_node.node import ComputeNodeCore
from compute_node.shards import node_store
from coordinator.executor import NodeBusyError
from coordinator.node_calls import NodeCaller, NodeTask, attempt_task
from idl.gen import ComputeNode
from idl.gen.ttypes import (
    NodeBusy,
    ShardMissing,
    ShardRef,
    ShardTask,
    TaskResult,
    TaskTimings,
    Tensor,
    TrainConfig,
)
from idl.rpc import ThriftServer, connect
from idl.tensors import encode_tensors

BULK = 256 * 1024  # bytes: large enough to travel as a bulk binary (a view of the frame)


def make_task() -> ShardTask:
    weights = [Tensor(shape=[BULK // 8], data=b"\x00" * BULK), Tensor(shape=[2], data=bytes(16))]
    return ShardTask(job_id="j", round=1, shard_index=3,
                     shard=ShardRef(name="s", digest="ab" * 32, n_rows=4, n_bytes=9),
                     weights=weights, config=TrainConfig(epochs=1, eta=0.1), token="t")


def test_each_attempt_gets_its_own_request_sharing_the_weights() -> None:
    task = make_task()

    first = attempt_task(task, True, 2.5)
    second = attempt_task(task, False, 7.0)

    assert first is not task and second is not first
    assert (first.may_decline, first.timeout_s) == (True, 2.5)
    assert (second.may_decline, second.timeout_s) == (False, 7.0)
    assert task.may_decline is None and task.timeout_s is None  # the shared one untouched
    assert first.weights is task.weights and first.shard is task.shard  # no model copied
    assert (first.job_id, first.round, first.shard_index, first.token) == ("j", 1, 3, "t")


class ScriptedNode:
    """A real ComputeNode service answering train() from a script of outcomes."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.requests: list[ShardTask] = []

    def ping(self, *args) -> bool:
        return True

    def put_shard(self, *args) -> None:
        pass

    def train(self, task: ShardTask, *args) -> TaskResult:
        self.requests.append(task)
        self.requests[-1] = None  # keep nothing of it (the test looks for leftovers)
        step = self.script.pop(0)
        if step == "missing":
            raise ShardMissing(message="send it", digest=task.shard.digest)
        if step == "busy":
            raise NodeBusy(message="busy", retry_after_s=0.0)
        return TaskResult(delta=encode_tensors([]), n_samples=4, train_loss=0.1,
                          train_error=0.0, timings=TaskTimings(0, 0, 0, 0), node="n")


@pytest.fixture
def node() -> Iterator[tuple[ScriptedNode, str]]:
    handler = ScriptedNode([])
    server = ThriftServer(ComputeNode.Processor(handler), "127.0.0.1", 0, name="scripted-node")
    thread = server.start()
    try:
        yield handler, str(server.address)
    finally:
        server.stop()
        thread.join(timeout=10)


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Reference counting only: whatever a cycle holds stays alive for the test to see."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize(("script", "error"), [(["missing", "ok"], None), (["busy"], "busy")])
def test_a_declared_error_from_a_node_keeps_no_request_alive(
    node, no_collector, script: list[str], error: str | None
) -> None:
    handler, address = node
    handler.script = script
    caller = NodeCaller()
    task = make_task()
    weights = weakref.ref(task.weights[0])
    work = NodeTask(task, b"1,2,3\n")
    outcome = ""
    try:
        outcome = caller(address, work, 5.0, False).n_samples
    except NodeBusyError as exc:  # as the executor takes it: the name goes at the block's end
        outcome = str(exc)
    finally:
        caller.close()
    del task, work

    assert outcome == (4 if error is None else error)

    assert weights() is None, [type(r).__name__ for r in gc.get_referrers(weights())]


@pytest.mark.parametrize("answer", ["missing", "declined"])
def test_a_node_answering_an_error_keeps_nothing_of_the_request(no_collector, answer: str) -> None:
    """The generated processor holds its declared error in a cycle with its own frame."""
    gc.collect()  # what earlier tests left
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(1.0, 0.0, seed=1)))
    task = make_task()
    task.weights = encode_tensors([np.zeros((4, 8192)), np.zeros(8192), np.zeros((8192, 3)),
                                   np.zeros(3)])  # a model of bulk tensors: views of the frame
    if answer == "declined":
        shard = b"1,2,3,4,0\n5,6,7,8,2\n"
        task.shard.digest = hashlib.sha256(shard).hexdigest()
        core.put_shard(task.shard.digest, shard)
    task.may_decline = True
    server = ThriftServer(ComputeNode.Processor(ComputeNodeHandler(core)), "127.0.0.1", 0,
                          name="node")
    thread = server.start()
    conn = connect(ComputeNode.Client, server.address, timeout_s=10.0)
    try:
        with pytest.raises(ShardMissing if answer == "missing" else NodeBusy):
            conn.client.train(task)
        assert conn.client.ping()  # the server is past the train call: its frame has returned
    finally:
        conn.close()
        server.stop()
        thread.join(timeout=10)

    held = [o for o in gc.get_objects()
            if isinstance(o, ShardTask) and o is not task and o.weights
            and o.weights[0].shape == [4, 8192]]
    assert held == []
