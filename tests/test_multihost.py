"""The cluster across emulated hosts: its own namespace each, shaped links, real faults.

scripts/hosts.py puts the coordinator, every node and the client in network namespaces of
their own on one bridge (made here, under names unique to the run, and always deleted),
with round trip, jitter, loss and rate on the links (see its docstring for how each is
emulated). Training across them must end bitwise equal to a loopback run; a node whose
link is cut mid-round is timed out and its task reassigned; packet loss is survived.
Needs root, iproute2 and Linux: skipped locally, saying why, and failed under CI.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, wait_for
from hosts import Network, Shape, why_not
from test_faults import node_in_flight, rows_of
from test_training_e2e import default_data, model_bytes, run_client

from harness import REPO, LocalCluster

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["2", "75", "24", "1e-4"]  # the seed's workload, two rounds
FAST_NODE = ("--load-delay-s", "0")
CLIENT_TIMEOUT_S = 120


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    reason = why_not()
    require(reason is None, reason or "")
    with Network(tmp_path / "hosts") as net:
        yield net


@pytest.fixture(scope="module")
def loopback_weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """TRAIN_ARGS on an ordinary loopback cluster: the weights every run here must match."""
    workdir = tmp_path_factory.mktemp("loopback")
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.add_node(0.0, *FAST_NODE)
        cluster.add_node(0.0, *FAST_NODE)
        done = run_client(cluster.add_coordinator("round-robin"), workdir, train_args=TRAIN_ARGS)
    assert done.returncode == 0, done.stderr
    return model_bytes(workdir / "model.npz")


def start_client(net: Network, coordinator, workdir: Path) -> subprocess.Popen:
    """The real client on a host of its own; its model and timing go to `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    host = net.add_host("client")
    argv = net.client_argv(host, coordinator.address, str(default_data()), *TRAIN_ARGS,
                           "--timing", str(workdir / "timing.txt"),
                           "--model-out", str(workdir / "model.npz"))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def finish(client: subprocess.Popen) -> tuple[int, str]:
    """Exit code and stderr; the client is ended by PID if it outlives the timeout."""
    try:
        _, err = client.communicate(timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        client.kill()
        _, err = client.communicate()
    return client.returncode, err


def test_seed_workload_across_hosts_matches_loopback_bitwise(
    network: Network, loopback_weights: bytes, tmp_path: Path
) -> None:
    wan = Shape(rtt_s=0.02, jitter_s=0.005, rate_bit_s=50e6)
    nodes = [network.start_node(network.add_host(f"node{i}", wan), *FAST_NODE)
             for i in range(3)]
    coordinator = network.start_coordinator(network.add_host("coord", Shape(rate_bit_s=50e6)),
                                            "round-robin", [n.address for n in nodes])

    code, err = finish(start_client(network, coordinator, tmp_path / "run"))

    assert code == 0, err
    used = {t["node"] for t in rows_of(tmp_path / "run" / "timing.txt", "task")}
    assert used == {str(n.address) for n in nodes}, used  # every host took part
    assert model_bytes(tmp_path / "run" / "model.npz") == loopback_weights


def test_link_cut_mid_round_is_survived_by_reassignment(
    network: Network, loopback_weights: bytes, tmp_path: Path
) -> None:
    wan = Shape(rtt_s=0.01, rate_bit_s=50e6)
    far_host = network.add_host("far", wan)
    far = network.start_node(far_host, *FAST_NODE, "--extra-latency-s", "1.0")
    others = [network.start_node(network.add_host(f"node{i}", wan), *FAST_NODE)
              for i in range(2)]
    coordinator = network.start_coordinator(
        network.add_host("coord"), "round-robin", [far.address, *[n.address for n in others]],
        "--heartbeat-s", "0.2", "--task-timeout-s", "2")
    client = start_client(network, coordinator, tmp_path / "run")
    try:
        wait_for(lambda: node_in_flight(far) > 0, f"a task on {far.address}", 60)
        network.cut(far_host)
        cut_at = time.monotonic()
        code, err = finish(client)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()

    assert code == 0, err
    assert far.popen.poll() is None, "the node should be alive, only unreachable"
    assert "timeout after" in coordinator.log(), coordinator.log()[-3000:]
    tasks = rows_of(tmp_path / "run" / "timing.txt", "task")
    assert str(far.address) not in {t["node"] for t in tasks if t["round"] == "1"}
    assert sum(int(t["failures"]) for t in tasks) >= 1
    assert time.monotonic() - cut_at < 60
    assert model_bytes(tmp_path / "run" / "model.npz") == loopback_weights


# The relay's emulation runs everywhere; nft's real packet loss where nft is installed.
LOSS_MODES = ["relay", *(["nft"] if shutil.which("nft") else [])]


@pytest.mark.parametrize("loss_by", LOSS_MODES)
def test_lossy_links_are_survived(loss_by: str, loopback_weights: bytes,
                                  tmp_path: Path) -> None:
    reason = why_not()
    require(reason is None, reason or "")
    with Network(tmp_path / "hosts", loss_by=loss_by) as network:
        run_lossy(network, loopback_weights, tmp_path)


def run_lossy(network: Network, loopback_weights: bytes, tmp_path: Path) -> None:
    lossy = Shape(rtt_s=0.01, jitter_s=0.002, loss=0.05, rate_bit_s=50e6)
    node_hosts = [network.add_host(f"node{i}", lossy) for i in range(2)]
    nodes = [network.start_node(h, *FAST_NODE) for h in node_hosts]
    coordinator_host = network.add_host("coord", lossy)
    coordinator = network.start_coordinator(coordinator_host, "round-robin",
                                            [n.address for n in nodes])

    code, err = finish(start_client(network, coordinator, tmp_path / "run"))

    assert code == 0, err
    assert model_bytes(tmp_path / "run" / "model.npz") == loopback_weights
    dropped = [network.dropped_packets(h) for h in (*node_hosts, coordinator_host)]
    if network.loss_by == "nft":  # real packets were lost and TCP recovered them
        assert sum(d or 0 for d in dropped) > 0, dropped
