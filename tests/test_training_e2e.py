"""Whole runs through real processes: client -> coordinator -> compute nodes on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import REPO, LocalCluster, ServerProcess
from idl.gen import Coordinator
from idl.rpc import connect

pytestmark = pytest.mark.slow

POLICIES = ["random", "round-robin", "load-aware"]
# The seed's configuration: 3 rounds, 75 epochs, 24 hidden units, eta 1e-4.
SEED_ARGS = ["3", "75", "24", "1e-4"]
ROUND_LINE = re.compile(r"^round (\d+)/(\d+)\s+validation error ([\d.]+)%", re.MULTILINE)


def default_data() -> Path:
    import letters

    return letters.default_data_dir()


def run_client(
    coordinator: ServerProcess, workdir: Path, *args: str, data_dir: Path | None = None,
    train_args: list[str] = SEED_ARGS, timeout_s: float = 300.0,
) -> subprocess.CompletedProcess:
    """Run the real client CLI; the final model goes to workdir/model.npz."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "client", coordinator.address.host, str(coordinator.address.port),
        str(data_dir or default_data()), *train_args,
        "--timing", str(workdir / "timing.txt"), "--model-out", str(workdir / "model.npz"),
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def round_errors(stdout: str) -> list[float]:
    return [float(m.group(3)) for m in ROUND_LINE.finditer(stdout)]


def model_bytes(path: Path) -> bytes:
    with np.load(path) as model:
        return b"".join(model[name].tobytes() for name in ("w1", "b1", "w2", "b2"))


@pytest.fixture(scope="module")
def four_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("four-nodes"))
    try:
        for _ in range(4):
            cluster.add_node(0.0, "--load-delay", "0")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def reference_model(four_nodes: LocalCluster, tmp_path_factory) -> bytes:
    """The fault-free run every other run must reproduce bit for bit."""
    coordinator = four_nodes.add_coordinator("round-robin")
    workdir = tmp_path_factory.mktemp("reference")
    done = run_client(coordinator, workdir)
    assert done.returncode == 0, done.stderr
    return model_bytes(workdir / "model.npz")


@pytest.mark.parametrize("policy", POLICIES)
def test_three_rounds_lower_the_error_and_match_bitwise(
    policy: str, four_nodes: LocalCluster, reference_model: bytes, tmp_path: Path
) -> None:
    coordinator = four_nodes.add_coordinator(policy)

    done = run_client(coordinator, tmp_path)

    assert done.returncode == 0, done.stderr
    errors = round_errors(done.stdout)
    assert len(errors) == 3, done.stdout
    assert errors[0] > errors[1] > errors[2], errors
    assert "final validation error" in done.stdout
    assert model_bytes(tmp_path / "model.npz") == reference_model


@pytest.mark.parametrize("n_nodes", [1, 2])
def test_node_count_does_not_change_a_bit(
    n_nodes: int, four_nodes: LocalCluster, reference_model: bytes, tmp_path: Path
) -> None:
    coordinator = four_nodes.add_coordinator(
        "load-aware", nodes=[n.address for n in four_nodes.nodes[:n_nodes]]
    )

    done = run_client(coordinator, tmp_path)

    assert done.returncode == 0, done.stderr
    assert model_bytes(tmp_path / "model.npz") == reference_model


def wait_for_task_on(coordinator: ServerProcess, victim: ServerProcess, timeout_s: float) -> None:
    """Poll the coordinator's status until `victim` has a task in flight."""
    deadline = time.monotonic() + timeout_s
    conn = connect(Coordinator.Client, coordinator.address, timeout_s=5.0)
    try:
        while time.monotonic() < deadline:
            for node in conn.client.status("").nodes:
                if node.address == str(victim.address) and node.tasks_in_flight > 0:
                    return
            time.sleep(0.01)
    finally:
        conn.close()
    raise TimeoutError(f"{victim.address} never got a task")


def test_node_killed_mid_round_changes_nothing(
    reference_model: bytes, tmp_path: Path
) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.add_node(0.0, "--load-delay", "0")
        cluster.add_node(0.0, "--load-delay", "0")
        victim = cluster.add_node(1.0, "--load-delay", "2")  # every task sleeps 2 s first
        coordinator = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2")
        outcome: dict[str, subprocess.CompletedProcess] = {}
        client = threading.Thread(
            target=lambda: outcome.setdefault("done", run_client(coordinator, tmp_path / "run"))
        )
        client.start()
        wait_for_task_on(coordinator, victim, timeout_s=60)

        victim.kill()
        client.join(timeout=300)

        done = outcome["done"]
        assert done.returncode == 0, done.stderr
        first = next(line for line in done.stdout.splitlines() if line.startswith("round 1/"))
        assert "failed 0" not in first  # round 1 needed a retry
        assert model_bytes(tmp_path / "run" / "model.npz") == reference_model
