"""Failures met by real processes end with the same weights as a run that met none.

Every test here runs the real client, coordinator(s) and compute nodes on loopback,
injects one kind of failure (SIGKILL, SIGSTOP, random crashes, a dead coordinator, a
killed client, a node joining, every node gone) and compares the final model bit for
bit with a fault-free run of the same configuration. Waits poll a condition (node or
coordinator status, the checkpoint file); nothing sleeps for readiness.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from test_training_e2e import default_data, model_bytes, run_client

from client.timing import read_timing
from harness import REPO, LocalCluster, ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.rpc import connect
from mlcore.checkpoint import load_model

pytestmark = pytest.mark.slow

# Five short rounds: enough rounds to fail in the middle of, fast enough to run many times.
ROUNDS = 5
FAST_ARGS = [str(ROUNDS), "10", "24", "1e-4"]
POLICIES = ["random", "round-robin", "load-aware"]


# ------------------------------------------------------------------ helpers


def node_in_flight(node: ServerProcess) -> int:
    """Tasks the node itself says it has accepted and not yet answered."""
    try:
        conn = connect(ComputeNode.Client, node.address, timeout_s=2.0)
    except Exception:  # noqa: BLE001 - not answering counts as "no task"
        return 0
    try:
        return conn.client.load("").tasks_in_flight
    finally:
        conn.close()


def coordinator_status(coordinator: ServerProcess):
    conn = connect(Coordinator.Client, coordinator.address, timeout_s=5.0)
    try:
        return conn.client.status("")
    finally:
        conn.close()


def checkpoint_round(path: Path) -> int:
    """The last completed round in a checkpoint (0 when there is none yet)."""
    if not path.exists():
        return 0
    _, meta = load_model(path)  # written atomically, so never half a file
    return int(meta["round"])


def rows_of(timing: Path, kind: str) -> list[dict[str, str]]:
    return [row for row in read_timing(timing)[1] if row["kind"] == kind]


class ClientRun:
    """The real client CLI in the background, so a test can hurt things while it runs."""

    def __init__(self, coordinator: ServerProcess, workdir: Path, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.model = workdir / "model.npz"
        self.timing = workdir / "timing.txt"
        argv = [
            sys.executable, "-m", "client", coordinator.address.host,
            str(coordinator.address.port), str(default_data()), *FAST_ARGS,
            "--timing", str(self.timing), "--model-out", str(self.model), *args,
        ]
        self._out = open(workdir / "client.out", "w")  # noqa: SIM115 - closed in wait()
        self._err = open(workdir / "client.err", "w")  # noqa: SIM115
        self.popen = subprocess.Popen(argv, stdout=self._out, stderr=self._err, cwd=REPO)

    def wait(self, timeout_s: float = 120.0) -> tuple[int, str, str]:
        """Exit code, stdout, stderr."""
        code = self.popen.wait(timeout=timeout_s)
        self._out.close()
        self._err.close()
        return (code, (self.workdir / "client.out").read_text(),
                (self.workdir / "client.err").read_text())

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """Cleanup: end it by PID if still running."""
        self.kill()
        self._out.close()
        self._err.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def clients() -> Iterator[list[ClientRun]]:
    started: list[ClientRun] = []
    yield started
    for run in started:
        run.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The fault-free run of FAST_ARGS (2 nodes, round-robin) that every test must match."""
    workdir = tmp_path_factory.mktemp("fault-reference")
    with LocalCluster(workdir / "cluster") as c:
        c.add_node(0.0, "--load-delay", "0")
        c.add_node(0.0, "--load-delay", "0")
        coordinator = c.add_coordinator("round-robin")
        done = run_client(coordinator, workdir, train_args=FAST_ARGS)
    assert done.returncode == 0, done.stderr
    return model_bytes(workdir / "model.npz")


def fast_nodes(cluster: LocalCluster, n: int, *extra: str) -> list[ServerProcess]:
    return [cluster.add_node(0.0, "--load-delay", "0", *extra) for _ in range(n)]


# ------------------------------------------------------------------ node failures


@pytest.mark.parametrize("policy", POLICIES)
def test_node_killed_mid_task_under_each_policy(
    policy: str, cluster: LocalCluster, clients: list[ClientRun], reference: bytes,
    tmp_path: Path,
) -> None:
    fast_nodes(cluster, 2)
    # The victim holds every task for a second after training, so it is caught mid-task.
    victim = cluster.add_node(0.0, "--load-delay", "0", "--extra-latency", "1.0")
    coordinator = cluster.add_coordinator(policy, "--heartbeat-s", "0.2")
    run = ClientRun(coordinator, tmp_path / "run")
    clients.append(run)

    wait_for(lambda: node_in_flight(victim) > 0, f"a task on {victim.address}", 60)
    victim.kill()
    code, out, err = run.wait()

    assert code == 0, err
    tasks = rows_of(run.timing, "task")
    assert str(victim.address) not in {t["node"] for t in tasks}  # its results never arrived
    assert sum(int(t["failures"]) for t in tasks) >= 1, "the kill cost no retry?"
    assert model_bytes(run.model) == reference


def test_hung_node_times_out_and_its_task_is_reassigned(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    fast_nodes(cluster, 2)
    victim = cluster.add_node(0.0, "--load-delay", "0", "--extra-latency", "1.0")
    coordinator = cluster.add_coordinator(
        "round-robin", "--heartbeat-s", "0.2", "--task-timeout-s", "3"
    )
    run = ClientRun(coordinator, tmp_path / "run")
    clients.append(run)
    try:
        wait_for(lambda: node_in_flight(victim) > 0, f"a task on {victim.address}", 60)
        os.kill(victim.pid, signal.SIGSTOP)  # alive, connected, and silent: a real hang
        code, out, err = run.wait()
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    assert code == 0, err
    log = coordinator.log()
    assert "timeout after" in log, log[-2000:]
    tasks = rows_of(run.timing, "task")
    round_1 = [t for t in tasks if t["round"] == "1"]
    assert str(victim.address) not in {t["node"] for t in round_1}
    assert model_bytes(run.model) == reference


def test_nodes_crashing_at_random_over_five_rounds(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    """Each node crashes on 1 in 5 accepted tasks (seeded); the test restarts crashed ones.

    Without restarts four nodes are gone after a handful of tasks (80 are needed), and
    the round then fails like test_all_nodes_down_...: the coordinator waits until the
    round's deadline, the client exits non-zero keeping its checkpoint. Restarted nodes
    join by registering with the coordinator (--coordinator), on a fresh port.
    """
    coordinator = cluster.add_coordinator(
        "round-robin", "--heartbeat-s", "0.2", "--max-attempts", "25", nodes=[]
    )
    seeds = iter(range(1, 1000))

    def crashy_node() -> ServerProcess:
        """Started without waiting for it: it may take a task and crash before any ping."""
        seed = next(seeds)
        log_path = cluster.workdir / f"crashy-{seed}.log"
        argv = [sys.executable, "-m", "compute_node", "0", "0.0", "--load-delay", "0",
                "--crash-probability", "0.2", "--seed", str(seed),
                "--coordinator", str(coordinator.address), "--heartbeat-s", "0.2"]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        node = ServerProcess(popen, coordinator.address, log_path, argv)  # address unused
        cluster.nodes.append(node)  # stopped by PID with the cluster
        return node

    live = [crashy_node() for _ in range(4)]
    wait_for(lambda: coordinator_status(coordinator).counters.get("nodes_alive", 0) == 4,
             "four registered nodes", 30)
    stopping = threading.Event()
    restarts: list[int] = []

    def restarter() -> None:
        while not stopping.is_set():
            for i, node in enumerate(live):
                if node.popen.poll() is not None and not stopping.is_set():
                    live[i] = crashy_node()
                    restarts.append(node.pid)
            stopping.wait(0.05)

    thread = threading.Thread(target=restarter, daemon=True)
    thread.start()
    try:
        run = ClientRun(coordinator, tmp_path / "run", "--deadline", "60")
        clients.append(run)
        code, out, err = run.wait()
    finally:
        stopping.set()
        thread.join(timeout=30)

    assert code == 0, err
    crashes = sum(p.log().count("injected_crash") for p in cluster.nodes)
    assert crashes >= 1 and len(restarts) >= 1, "no node crashed: the test proved nothing"
    assert model_bytes(run.model) == reference


# ------------------------------------------------------------------ coordinator and client


def test_coordinator_killed_mid_round_client_fails_over(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    fast_nodes(cluster, 3, "--extra-latency", "0.3")  # every round takes a while
    first = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2")
    second = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2")
    run = ClientRun(first, tmp_path / "run", "--coordinators", f"{first.address},{second.address}")
    clients.append(run)

    def mid_round_2() -> bool:
        status = coordinator_status(first)
        return status.counters.get("rounds", 0) >= 1 and any(
            n.tasks_in_flight > 0 for n in status.nodes
        )

    wait_for(mid_round_2, "the first coordinator in the middle of round 2", 60)
    first.kill()
    code, out, err = run.wait()

    assert code == 0, err
    used = [r["coordinator"] for r in rows_of(run.timing, "round")]
    assert used[0] == str(first.address)
    assert used[1:] == [str(second.address)] * (ROUNDS - 1), used
    assert model_bytes(run.model) == reference


def test_two_coordinators_serve_the_same_nodes_at_once(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    fast_nodes(cluster, 2, "--extra-latency", "0.1")
    a = cluster.add_coordinator("round-robin")
    b = cluster.add_coordinator("load-aware")
    runs = [ClientRun(a, tmp_path / "a"), ClientRun(b, tmp_path / "b")]
    clients.extend(runs)

    results = [run.wait() for run in runs]

    for (code, _, err), run in zip(results, runs, strict=True):
        assert code == 0, err
        assert model_bytes(run.model) == reference
    # Each coordinator ran all of its own tasks on the two shared nodes.
    for coordinator in (a, b):
        done = sum(n.tasks_done for n in coordinator_status(coordinator).nodes)
        assert done == 16 * ROUNDS


def test_client_killed_after_round_two_resumes_to_the_same_weights(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    fast_nodes(cluster, 2, "--extra-latency", "0.3")
    coordinator = cluster.add_coordinator("round-robin")
    ckpt = tmp_path / "ckpt.npz"
    run = ClientRun(coordinator, tmp_path / "run", "--checkpoint", str(ckpt))
    clients.append(run)

    wait_for(lambda: checkpoint_round(ckpt) >= 2, "round 2 in the checkpoint", 60)
    run.kill()
    assert checkpoint_round(ckpt) == 2
    assert not run.model.exists()

    resumed = run_client(coordinator, tmp_path / "run", "--checkpoint", str(ckpt), "--resume",
                         train_args=FAST_ARGS)

    assert resumed.returncode == 0, resumed.stderr
    assert _round_lines(resumed.stdout)[0].startswith(f"round 3/{ROUNDS}"), resumed.stdout
    assert model_bytes(tmp_path / "run" / "model.npz") == reference


# ------------------------------------------------------------------ membership


def test_node_joining_mid_run_registers_and_receives_tasks(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    fast_nodes(cluster, 2, "--extra-latency", "0.7")
    coordinator = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2")
    ckpt = tmp_path / "ckpt.npz"
    run = ClientRun(coordinator, tmp_path / "run", "--checkpoint", str(ckpt))
    clients.append(run)

    wait_for(lambda: checkpoint_round(ckpt) >= 1, "round 1 done", 60)
    joiner = cluster.add_node(0.0, "--load-delay", "0", "--coordinator",
                              str(coordinator.address), "--heartbeat-s", "0.2")
    wait_for(lambda: any(n.address == str(joiner.address)
                         for n in coordinator_status(coordinator).nodes),
             "the new node's registration", 15)
    joined_after = checkpoint_round(ckpt)
    code, out, err = run.wait()

    assert code == 0, err
    assert joined_after < ROUNDS, "the run ended before the node joined"
    tasks = rows_of(run.timing, "task")
    rounds_on_joiner = {int(t["round"]) for t in tasks if t["node"] == str(joiner.address)}
    assert rounds_on_joiner, "the new node got no task"
    assert min(rounds_on_joiner) > 1
    assert model_bytes(run.model) == reference


def _round_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("round ")]


def test_all_nodes_down_fails_clearly_then_a_returning_node_finishes_the_run(
    cluster: LocalCluster, clients: list[ClientRun], reference: bytes, tmp_path: Path
) -> None:
    deadline_s = 4.0
    nodes = fast_nodes(cluster, 2, "--extra-latency", "0.3")
    coordinator = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2")
    ckpt = tmp_path / "ckpt.npz"
    run = ClientRun(coordinator, tmp_path / "run", "--checkpoint", str(ckpt),
                    "--deadline", str(deadline_s))
    clients.append(run)

    wait_for(lambda: checkpoint_round(ckpt) >= 2, "round 2 in the checkpoint", 60)
    for node in nodes:
        node.kill()
    killed_at = time.monotonic()
    code, out, err = run.wait()
    waited_s = time.monotonic() - killed_at

    assert code != 0
    assert "Traceback" not in out + err
    assert err.startswith("Error: ") or err.startswith("error: "), err
    assert "tasks unfinished (0 of 2 known nodes alive" in err and "round deadline" in err, err
    assert "checkpoint keeps the last completed round (2, in" in err and "--resume" in err, err
    assert waited_s < deadline_s + 3.0, f"took {waited_s:.1f}s for a {deadline_s}s deadline"
    assert checkpoint_round(ckpt) == 2

    cluster.add_node(0.0, "--load-delay", "0", "--coordinator", str(coordinator.address),
                     "--heartbeat-s", "0.2")
    wait_for(lambda: coordinator_status(coordinator).counters.get("nodes_alive", 0) >= 1,
             "a node back", 15)
    resumed = run_client(coordinator, tmp_path / "run", "--checkpoint", str(ckpt), "--resume",
                         train_args=FAST_ARGS)

    assert resumed.returncode == 0, resumed.stderr
    assert _round_lines(resumed.stdout)[0].startswith(f"round 3/{ROUNDS}"), resumed.stdout
    assert model_bytes(tmp_path / "run" / "model.npz") == reference
