"""The coordinator as a real process over real compute nodes on loopback."""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from conftest import wait_for

from harness import start_coordinator, start_server
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    DatasetError,
    InvalidRequest,
    NoNodesAvailable,
    RoundRequest,
    ShardMissing,
    ShardRef,
    TrainConfig,
)
from idl.rpc import connect
from idl.tensors import encode_tensors

D, H, K = 4, 3, 3


def make_shards(n: int, *, k: int = K, seed: int = 0) -> list[tuple[str, bytes]]:
    """Small CSV shards (D ints then a label); shard i has 10 + i rows, so order shows."""
    rng = np.random.default_rng(seed)
    shards = []
    for i in range(n):
        rows = [
            ",".join(str(v) for v in [*rng.integers(0, 16, D), rng.integers(0, k)])
            for _ in range(10 + i)
        ]
        shards.append((f"train_{i}.txt", ("\n".join(rows) + "\n").encode()))
    return shards


def make_request(shards, *, round_=1, policy="", deadline_s=30.0, epochs=2, token=""):
    rng = np.random.default_rng(1)
    weights = [rng.uniform(-0.01, 0.01, s) for s in [(D, H), (H,), (H, K), (K,)]]
    refs = [
        ShardRef(name=n, digest=hashlib.sha256(b).hexdigest(), n_rows=b.count(b"\n"),
                 n_bytes=len(b))
        for n, b in shards
    ]
    return RoundRequest(
        job_id="test", round=round_, weights=encode_tensors(weights), shards=refs,
        config=TrainConfig(epochs=epochs, eta=1e-3), policy=policy, deadline_s=deadline_s,
        token=token,
    )


class coordinator_client:  # noqa: N801 - used like a function in `with`
    """A connection to a coordinator for one `with` block.

    A class, not @contextmanager: contextlib assigns __traceback__ to the exception it
    re-raises, which the generated (immutable) Thrift exceptions refuse.
    """

    def __init__(self, proc, timeout_s: float = 60.0) -> None:
        self._conn = connect(Coordinator.Client, proc.address, timeout_s)

    def __enter__(self):
        return self._conn.client

    def __exit__(self, *exc_info) -> bool:
        self._conn.close()
        return False


def upload(proc, shards) -> None:
    with coordinator_client(proc) as client:
        for _, data in shards:
            client.put_shard(hashlib.sha256(data).hexdigest(), data, "")


def run_round(proc, shards, **kwargs):
    upload(proc, shards)
    request = make_request(shards, **kwargs)
    with coordinator_client(proc, request.deadline_s + 10) as client:
        return client.run_round(request)


def status(proc):
    with coordinator_client(proc, 5.0) as client:
        return client.status("")


def node_status(proc, node):
    return next(n for n in status(proc).nodes if n.address == str(node.address))


# ------------------------------------------------------------------ rounds and policies


def test_round_returns_results_in_shard_order_with_records(make_cluster):
    cluster = make_cluster(nodes=3)
    shards = make_shards(7)

    result = run_round(cluster.coordinator, shards)

    nodes = {str(n.address) for n in cluster.nodes}
    assert [r.n_samples for r in result.results] == [10 + i for i in range(7)]
    assert [r.shard_index for r in result.records] == list(range(7))
    assert [r.shard for r in result.records] == [n for n, _ in shards]
    for rec, res in zip(result.records, result.results, strict=True):
        assert rec.node in nodes and res.node == rec.node
        assert rec.attempts == 1 and rec.failures == []
        assert rec.n_samples == res.n_samples and rec.timings.total_s > 0
        assert 0 <= rec.start_s <= rec.end_s <= result.wall_s
        assert [t.shape for t in res.delta] == [[D, H], [H], [H, K], [K]]
    assert result.policy == "round-robin"
    assert result.coordinator == str(cluster.coordinator.address)
    counters = status(cluster.coordinator).counters
    assert counters["rounds"] == 1 and counters["tasks"] == 7
    assert counters["shard_uploads"] == 7  # nodes had none; each shard travelled once


def test_shards_travel_to_a_node_once(make_cluster):
    cluster = make_cluster(nodes=1)
    shards = make_shards(3)

    run_round(cluster.coordinator, shards)
    run_round(cluster.coordinator, shards, round_=2)

    assert status(cluster.coordinator).counters["shard_uploads"] == 3


def test_round_robin_spreads_tasks_evenly(make_cluster):
    cluster = make_cluster(nodes=2, policy="3")

    result = run_round(cluster.coordinator, make_shards(8))

    assert Counter(r.node for r in result.records) == {
        str(n.address): 4 for n in cluster.nodes
    }


def test_random_placement_is_reproducible_for_a_seed(make_cluster):
    cluster = make_cluster(nodes=3, policy="random", coordinator_args=("--seed", "5"))
    twin = cluster.add_coordinator("1", "--seed", "5")
    other = cluster.add_coordinator("random", "--seed", "6")
    shards = make_shards(12)

    placements = [
        [r.node for r in run_round(c, shards).records]
        for c in (cluster.coordinator, twin, other)
    ]

    assert placements[0] == placements[1]
    assert placements[0] != placements[2]
    assert len(set(placements[0])) > 1


@pytest.mark.slow
def test_load_aware_sends_nothing_to_a_node_that_always_declines(make_cluster):
    cluster = make_cluster(
        nodes=2, policy="load-aware", loads=[1.0, 0.0], node_args=("--load-delay", "0.2")
    )
    busy, free = (str(n.address) for n in cluster.nodes)

    result = run_round(cluster.coordinator, make_shards(8))

    assert {r.node for r in result.records} == {free}
    declined = sum(r.declined for r in result.records)
    assert declined and all(r.failures == [] for r in result.records)  # a decline is no failure
    assert all(r.attempts == 1 + r.declined for r in result.records)
    assert max(r.timings.load_delay_s for r in result.results) == 0.0
    st = status(cluster.coordinator)
    assert st.counters["declined"] == declined and "retries" not in st.counters
    assert all(n.alive for n in st.nodes)  # busy is not dead


def test_policy_in_request_overrides_the_coordinators(make_cluster):
    cluster = make_cluster(nodes=2, policy="random")

    result = run_round(cluster.coordinator, make_shards(4), policy="round-robin")

    assert result.policy == "round-robin"
    assert Counter(r.node for r in result.records) == {str(n.address): 2 for n in cluster.nodes}


# ------------------------------------------------------------------ faults


def test_killed_node_tasks_go_elsewhere_and_it_is_marked_dead(make_cluster):
    cluster = make_cluster(nodes=3, coordinator_args=("--heartbeat-s", "30"))
    victim = cluster.nodes[1]
    # Kill it after the first heartbeat saw it alive: the next beat is 30 s away, so the
    # round itself discovers the death.
    wait_for(lambda: node_status(cluster.coordinator, victim).last_seen_s_ago >= 0,
             what="first heartbeat")
    victim.kill()

    result = run_round(cluster.coordinator, make_shards(6))

    assert str(victim.address) not in {r.node for r in result.records}
    retried = [r for r in result.records if r.attempts > 1]
    assert retried and all(str(victim.address) in r.failures[0] for r in retried)
    st = node_status(cluster.coordinator, victim)
    assert not st.alive and st.failures >= 1


@pytest.mark.slow
def test_node_killed_mid_round_its_tasks_finish_elsewhere(make_cluster):
    cluster = make_cluster(
        nodes=2, loads=[1.0, 1.0], node_args=("--load-delay", "1.0"),
        coordinator_args=("--heartbeat-s", "0.2"),
    )
    victim = cluster.nodes[0]
    shards = make_shards(4)
    upload(cluster.coordinator, shards)
    outcome = {}

    def go():
        outcome["result"] = run_round(cluster.coordinator, shards)

    runner = threading.Thread(target=go)
    runner.start()
    wait_for(lambda: node_status(cluster.coordinator, victim).tasks_in_flight > 0,
             what="a task in flight on the victim")
    victim.kill()
    runner.join(timeout=60)

    result = outcome["result"]
    assert [r.n_samples for r in result.results] == [10 + i for i in range(4)]
    assert {r.node for r in result.records} == {str(cluster.nodes[1].address)}
    moved = [r for r in result.records if r.attempts > 1]
    assert moved and all(f.startswith(str(victim.address)) for r in moved for f in r.failures)
    assert not node_status(cluster.coordinator, victim).alive


def test_all_nodes_dead_gives_no_nodes_available_within_the_deadline(make_cluster):
    cluster = make_cluster(nodes=1)
    cluster.nodes[0].kill()
    shards = make_shards(2)
    upload(cluster.coordinator, shards)

    began = time.monotonic()
    with pytest.raises(NoNodesAvailable, match="deadline of 1.5s") as info, coordinator_client(
        cluster.coordinator
    ) as client:
        client.run_round(make_request(shards, deadline_s=1.5))
    elapsed = time.monotonic() - began

    assert 1.4 <= elapsed < 3.5
    assert "2 of 2 tasks unfinished (0 of 1 known nodes alive" in info.value.message
    assert status(cluster.coordinator).counters["rounds_failed"] == 1


@pytest.mark.slow
def test_restarted_node_is_taken_back_by_the_heartbeat(make_cluster):
    cluster = make_cluster(nodes=1, coordinator_args=("--heartbeat-s", "0.2"))
    node = cluster.nodes[0]
    node.kill()
    wait_for(lambda: not node_status(cluster.coordinator, node).alive, what="node marked dead")

    reborn = start_server(
        "compute_node", [str(node.address.port), "0", "--load-delay", "0"],
        cluster.workdir / "node-reborn.log", ComputeNode.Client,
    )
    cluster.nodes.append(reborn)
    wait_for(lambda: node_status(cluster.coordinator, node).alive, what="node taken back")

    result = run_round(cluster.coordinator, make_shards(2))
    assert {r.node for r in result.records} == {str(node.address)}


def test_node_that_registers_itself_gets_tasks(make_cluster):
    cluster = make_cluster(nodes=0)
    coordinator = cluster.coordinator
    assert status(coordinator).nodes == []

    joiner = cluster.add_node(
        0.0, "--load-delay", "0", "--coordinator", str(coordinator.address),
        "--heartbeat-s", "0.2",
    )
    wait_for(lambda: [n.address for n in status(coordinator).nodes] == [str(joiner.address)],
             what="registration")

    result = run_round(coordinator, make_shards(2))
    assert {r.node for r in result.records} == {str(joiner.address)}


# ------------------------------------------------------------------ bad requests


def test_shard_unknown_to_the_coordinator_is_reported_missing(make_cluster):
    cluster = make_cluster(nodes=0)
    shards = make_shards(2)
    upload(cluster.coordinator, shards[:1])

    with pytest.raises(ShardMissing) as info, coordinator_client(cluster.coordinator) as client:
        client.run_round(make_request(shards))

    assert info.value.digest == hashlib.sha256(shards[1][1]).hexdigest()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r.config, "epochs", 0), "config.epochs"),
        (lambda r: setattr(r.config, "eta", float("nan")), "config.eta"),
        (lambda r: r.weights.pop(), "weights"),
        (lambda r: setattr(r.weights[0], "data", b"x"), "weights\\[0\\]"),
        (lambda r: setattr(r, "policy", "fastest"), "policy"),
        (lambda r: setattr(r.shards[0], "digest", "nothex"), "shards\\[0\\]"),
    ],
)
def test_invalid_request_names_the_field(make_cluster, change, field):
    cluster = make_cluster(nodes=0)  # rejected before any node is asked
    request = make_request(make_shards(1))
    change(request)

    with pytest.raises(InvalidRequest, match=field), coordinator_client(
        cluster.coordinator
    ) as client:
        client.run_round(request)


def test_bad_shard_bytes_are_rejected_on_upload(make_cluster):
    cluster = make_cluster(nodes=0)
    with pytest.raises(InvalidRequest, match="hash to"), coordinator_client(
        cluster.coordinator
    ) as client:
        client.put_shard("0" * 64, b"1,2,3,4,0\n", "")


def test_dataset_error_from_a_node_fails_the_round_with_that_error(make_cluster):
    cluster = make_cluster(nodes=2)
    shards = make_shards(3, k=K + 5)  # labels beyond the model's K classes

    with pytest.raises(DatasetError):
        run_round(cluster.coordinator, shards)


# ------------------------------------------------------------------ robustness and CLI


def test_coordinator_survives_garbage_huge_frames_and_idle_connections(make_cluster):
    cluster = make_cluster(nodes=0)
    address = cluster.coordinator.address
    idle = [socket.create_connection((address.host, address.port)) for _ in range(10)]
    try:
        with socket.create_connection((address.host, address.port)) as s:
            s.sendall(b"\x00\x00\x00\x10garbage-garbage!")
        with socket.create_connection((address.host, address.port)) as s:
            s.sendall(struct.pack(">I", 2**31 - 1) + b"\x80\x01")

        began = time.monotonic()
        with coordinator_client(cluster.coordinator, 5.0) as client:
            assert client.ping()
        assert time.monotonic() - began < 1.0
    finally:
        for s in idle:
            s.close()


@pytest.mark.parametrize(
    ("policy", "name"),
    [("1", "random"), ("2", "load-aware"), ("3", "round-robin"), ("load-aware", "load-aware")],
)
def test_policy_names_and_numbers_are_accepted(tmp_path, policy, name):
    proc = start_coordinator(tmp_path, policy, [])
    try:
        assert status(proc).policy == name
    finally:
        proc.stop()


def test_default_nodes_file_is_read_from_the_working_directory_or_may_be_absent(tmp_path):
    empty = start_server("coordinator", ["0", "random"], tmp_path / "c-empty.log",
                         Coordinator.Client)
    try:
        assert status(empty).nodes == []
        assert "event=no_nodes_file" in empty.log()
    finally:
        empty.stop()
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "compute_nodes.txt").write_text("# two nodes\n127.0.0.1,1\n\n127.0.0.1,2\n")
    proc = start_server("coordinator", ["0", "random"], listed / "c.log", Coordinator.Client)
    try:
        assert [n.address for n in status(proc).nodes] == ["127.0.0.1:1", "127.0.0.1:2"]
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0", "2", "--nodes", "{tmp}/nodes.txt"], "nodes.txt line 2: expected host:port"),
        (["0", "2", "--nodes", "{tmp}/absent.txt"], "cannot read nodes file"),
        (["0", "fastest"], "unknown policy 'fastest'"),
        (["0", "2", "--max-attempts", "0"], "--max-attempts"),
        (["70000", "2"], "PORT"),
    ],
)
def test_bad_command_line_is_one_clear_line_and_a_non_zero_exit(tmp_path, args, message):
    (tmp_path / "nodes.txt").write_text("127.0.0.1,9000\nnot a node\n")
    argv = [sys.executable, "-m", "coordinator", *(a.format(tmp=tmp_path) for a in args)]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)

    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_straggling_node_is_overtaken_by_a_rerun_elsewhere(make_cluster):
    cluster = make_cluster(nodes=1)
    slow = cluster.add_node(0.0, "--load-delay", "0", "--extra-latency", "4")
    coordinator = cluster.add_coordinator(
        "round-robin", "--straggler-factor", "4", "--straggler-min-s", "0.5"
    )
    fast = cluster.nodes[0]

    result = run_round(coordinator, make_shards(4))

    assert result.wall_s < 3.0  # the slow node alone would take 4 s or more
    assert [r.n_samples for r in result.results] == [10 + i for i in range(4)]
    assert {r.node for r in result.records} == {str(fast.address)}
    overtaken = [r for r in result.records if r.failures]
    assert overtaken and all(
        r.failures == [f"{slow.address} straggler, re-run elsewhere"] for r in overtaken
    )
    assert status(coordinator).counters["stragglers"] == len(overtaken)
