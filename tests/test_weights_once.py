"""A round's weights cross to each node once, by digest, and results stay bitwise the same."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import threading
import time

import numpy as np
import pytest

from compute_node.load import LoadConfig, LoadSimulator
from compute_node.node import ComputeNodeCore, MissingWeights, Task
from compute_node.shards import node_store
from compute_node.trainer import TrainSettings
from compute_node.weights_cache import WeightsCache
from coordinator.node_calls import HeldWeights, NodeCaller, NodeTask
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    InvalidRequest,
    RoundRequest,
    ShardRef,
    ShardTask,
    TaskResult,
    TrainConfig,
    WeightsMissing,
)
from idl.rpc import Address, ThriftServer, connect
from idl.tensors import decode_tensors, encode_tensors
from idl.weights import weights_digest
from mlcore.model import init_params

D, H, K = 4, 3, 3


def make_shards(n: int) -> list[tuple[ShardRef, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rows = [",".join(str(v) for v in [*rng.integers(0, 16, D), rng.integers(0, K)])
                for _ in range(10 + i)]
        data = ("\n".join(rows) + "\n").encode()
        out.append((ShardRef(name=f"train_{i}.txt", digest=hashlib.sha256(data).hexdigest(),
                             n_rows=10 + i, n_bytes=len(data)), data))
    return out


def weights_for(seed: int) -> list:
    return encode_tensors(init_params(D, H, K, seed=seed).tensors())


def request(shards, weights, round_: int = 1) -> RoundRequest:
    return RoundRequest(job_id="once", round=round_, weights=weights,
                        shards=[ref for ref, _ in shards], config=TrainConfig(epochs=2, eta=1e-3),
                        deadline_s=60.0)


def deltas(result) -> list[list[bytes]]:
    return [[bytes(t.data) for t in r.delta] for r in result.results]


def inline_deltas(node, shards, weights) -> list[list[bytes]]:
    """Each shard trained on `node` with the weights carried by the task, as before."""
    conn = connect(ComputeNode.Client, node.address, 30.0)
    try:
        out = []
        for i, (ref, data) in enumerate(shards):
            conn.client.put_shard(ref.digest, data, "")
            task = ShardTask(job_id="once", round=1, shard_index=i, shard=ref, weights=weights,
                             config=TrainConfig(epochs=2, eta=1e-3), timeout_s=30.0)
            out.append([bytes(t.data) for t in conn.client.train(task).delta])
        return out
    finally:
        conn.close()


def test_each_node_gets_the_weights_once_per_round_and_results_stay_bitwise(make_cluster):
    # Prepare: 8 tasks on 2 nodes, two rounds with different weights
    cluster = make_cluster(nodes=2)
    shards = make_shards(8)
    conn = connect(Coordinator.Client, cluster.coordinator.address, 60.0)
    try:
        for ref, data in shards:
            conn.client.put_shard(ref.digest, data, "")
        # Execute
        first = conn.client.run_round(request(shards, weights_for(1), 1))
        second = conn.client.run_round(request(shards, weights_for(2), 2))
        counters = conn.client.status("").counters
    finally:
        conn.close()

    # Assert: one upload per node and round, none inline, and the same bits as inline tasks
    assert counters["weights_uploads"] == 4
    assert counters.get("weights_inline", 0) == 0
    model_bytes = sum(len(t.data) for t in weights_for(1))
    shard_bytes = sum(len(data) for _, data in shards)
    assert counters["bytes_to_nodes"] == 4 * model_bytes + shard_bytes
    assert [node.log().count("event=weights_stored") for node in cluster.nodes] == [2, 2]
    assert deltas(first) == inline_deltas(cluster.nodes[0], shards, weights_for(1))
    assert deltas(second) == inline_deltas(cluster.nodes[1], shards, weights_for(2))


def test_a_node_that_lost_the_weights_is_sent_them_again(make_cluster):
    # Prepare: the node holds round 1's weights, then is given others (as by another job)
    cluster = make_cluster(nodes=1)
    shards = make_shards(3)
    weights = weights_for(1)
    conn = connect(Coordinator.Client, cluster.coordinator.address, 60.0)
    node = connect(ComputeNode.Client, cluster.nodes[0].address, 30.0)
    try:
        for ref, data in shards:
            conn.client.put_shard(ref.digest, data, "")
        first = conn.client.run_round(request(shards, weights))
        other = weights_for(7)
        node.client.put_weights(weights_digest(other), other, "")
        # Execute: the same round again (a client's retry): the coordinator thinks it holds them
        again = conn.client.run_round(request(shards, weights))
        counters = conn.client.status("").counters
    finally:
        conn.close()
        node.close()

    # Assert
    assert counters["weights_uploads"] == 2
    assert deltas(again) == deltas(first)


def test_train_by_an_unknown_digest_answers_weights_missing(make_cluster):
    cluster = make_cluster(nodes=1)
    (ref, data), = make_shards(1)
    weights = weights_for(1)
    conn = connect(ComputeNode.Client, cluster.nodes[0].address, 30.0)
    try:
        conn.client.put_shard(ref.digest, data, "")
        task = ShardTask(job_id="once", round=1, shard=ref, weights=[],
                         weights_digest=weights_digest(weights),
                         config=TrainConfig(epochs=2, eta=1e-3), timeout_s=30.0)
        with pytest.raises(WeightsMissing) as missing:
            conn.client.train(task)
        with pytest.raises(InvalidRequest, match="hash to"):
            conn.client.put_weights("0" * 64, weights, "")
        conn.client.put_weights(weights_digest(weights), weights, "")
        by_digest = conn.client.train(task)
    finally:
        conn.close()

    assert missing.value.digest == weights_digest(weights)
    assert "put_weights" in missing.value.message
    assert by_digest.n_samples == 10


def test_the_node_keeps_the_latest_weights_and_older_ones_only_while_in_use():
    cache = WeightsCache()
    old = cache.put("a" * 64, [np.zeros(3)])
    in_use = old  # a task that took them still runs
    cache.put("b" * 64, [np.ones(3)])
    assert cache.get("a" * 64) is in_use
    del old, in_use
    gc.collect()
    assert cache.get("a" * 64) is None
    assert cache.get("b" * 64) is not None
    assert len(cache) == 1


def test_concurrent_tasks_for_one_node_send_the_weights_once():
    held = HeldWeights()
    node = Address("127.0.0.1", 1)
    claims: list = []
    first = held.claim(node, "d" * 64, time.monotonic() + 5)
    threads = [threading.Thread(target=lambda: claims.append(
        held.claim(node, "d" * 64, time.monotonic() + 5))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert claims == []  # they wait while the put_weights request is being written
    upload = held.announce(node, "d" * 64)  # written, not yet answered
    for t in threads:
        t.join(5)

    assert first is None  # this one sends them
    assert claims == [upload] * 4 and not upload.answered.is_set()


def core_task(data: bytes, digest: str, timeout_s: float = 30.0) -> Task:
    return Task(digest=hashlib.sha256(data).hexdigest(), shard_name="t", weights=[],
                settings=TrainSettings(epochs=2, eta=1e-3), timeout_s=timeout_s,
                weights_digest=digest)


def test_a_task_that_overtakes_its_weights_waits_for_them():
    # Prepare: the shard is here, the weights arrive 0.2 s after the task naming them
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(0.0, 0.0, seed=1)))
    (_, data), = make_shards(1)
    core.put_shard(hashlib.sha256(data).hexdigest(), data)
    weights = weights_for(1)
    digest = weights_digest(weights)
    arrays = decode_tensors(weights, writable=False)
    late = threading.Timer(0.2, core.put_weights, (digest, digest, arrays))
    late.start()
    try:
        # Execute
        by_digest = core.train(core_task(data, digest))
    finally:
        late.cancel()
    inline = core.train(dataclasses.replace(core_task(data, ""), weights=arrays))

    # Assert: trained on those weights, bitwise as with them inline
    assert [d.tobytes() for d in by_digest.output.delta] == [
        d.tobytes() for d in inline.output.delta]


@pytest.mark.parametrize(("wait_s", "timeout_s", "waited_s"), [(0.3, 30.0, 0.3), (5.0, 0.4, 0.2)])
def test_weights_that_do_not_come_are_missing_after_the_wait(wait_s, timeout_s, waited_s):
    # Prepare: a node that never gets them (restarted, or given others since)
    core = ComputeNodeCore(node_store(1 << 20), LoadSimulator(LoadConfig(0.0, 0.0, seed=1)),
                           weights_wait_s=wait_s)
    (_, data), = make_shards(1)
    core.put_shard(hashlib.sha256(data).hexdigest(), data)

    # Execute
    started = time.monotonic()
    with pytest.raises(MissingWeights):
        core.train(core_task(data, "e" * 64, timeout_s))
    elapsed = time.monotonic() - started

    # Assert: the window, or half the task's budget when that is shorter
    assert waited_s <= elapsed < waited_s + 1.0


class _SlowToAnswerNode:
    """Answers put_weights only once the round's other tasks' trains have arrived (or 5 s)."""

    def __init__(self, n_others: int) -> None:
        self.puts = 0
        self._n_others = n_others
        self._others_here = threading.Event()
        self.answered_after_others: list[bool] = []
        self._lock = threading.Lock()
        self._by_digest = 0

    def put_weights(self, digest, weights, token="") -> None:
        self.puts += 1
        self.answered_after_others.append(self._others_here.wait(5.0))

    def train(self, task: ShardTask) -> TaskResult:
        if not task.weights:
            with self._lock:
                self._by_digest += 1
                if self._by_digest == self._n_others:  # the pipelined one comes after the answer
                    self._others_here.set()
        return TaskResult(delta=[], n_samples=1, node="slow")

    def ping(self) -> bool:
        return True


def test_other_tasks_for_a_node_do_not_wait_for_the_weights_answer():
    # Prepare: a node that answers put_weights only after the other tasks' trains arrive;
    # were they to wait for that answer (a second round trip), it would take 5 s
    handler = _SlowToAnswerNode(n_others=3)
    server = ThriftServer(ComputeNode.Processor(handler), name="slow-to-answer")
    server.start()
    caller = NodeCaller()
    weights = weights_for(1)
    (ref, data), = make_shards(1)
    task = ShardTask(job_id="once", round=1, shard=ref, weights=[],
                     weights_digest=weights_digest(weights), config=TrainConfig(epochs=1, eta=1))
    results: list = []
    try:
        # Execute: four tasks for one node at once
        started = time.monotonic()
        threads = [threading.Thread(target=lambda: results.append(caller(
            str(server.address), NodeTask(task, data, weights), 10.0, False)))
            for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - started
    finally:
        caller.close()
        server.stop()

    # Assert: one upload, answered after the other trains had arrived
    assert [r.n_samples for r in results] == [1] * 4
    assert handler.puts == 1 and handler.answered_after_others == [True]
    assert elapsed < 4.0


class _ForgetfulNode:
    """Accepts put_weights but never keeps them: a task by digest is always WeightsMissing."""

    def __init__(self) -> None:
        self.puts = 0

    def put_weights(self, digest, weights, token="") -> None:
        self.puts += 1

    def train(self, task: ShardTask) -> TaskResult:
        if not task.weights:
            raise WeightsMissing(message="lost", digest=task.weights_digest)
        arrays = decode_tensors(task.weights)
        return TaskResult(delta=encode_tensors([a * 0 for a in arrays]), n_samples=1, node="f")

    def ping(self) -> bool:
        return True


def test_a_node_that_keeps_losing_the_weights_gets_them_inline():
    # Prepare
    handler = _ForgetfulNode()
    server = ThriftServer(ComputeNode.Processor(handler), name="forgetful")
    server.start()
    caller = NodeCaller()
    weights = weights_for(1)
    (ref, data), = make_shards(1)
    task = ShardTask(job_id="once", round=1, shard=ref, weights=[],
                     weights_digest=weights_digest(weights), config=TrainConfig(epochs=1, eta=1))
    try:
        # Execute: twice over the same pooled connection, which must stay in step
        results = [caller(str(server.address), NodeTask(task, data, weights), 10.0, False)
                   for _ in range(2)]
    finally:
        caller.close()
        server.stop()

    # Assert: sent by put_weights twice per task, then inline
    assert [r.n_samples for r in results] == [1, 1]
    assert handler.puts == 4
    assert caller._counters.as_dict()["weights_inline"] == 2
