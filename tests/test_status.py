"""`python -m client status` and the --metrics-port endpoints, against real processes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import letters
from harness import REPO, ServerProcess

METRICS = ("--metrics-port", "0")


def client(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def train(coordinator: ServerProcess, workdir: Path, rounds: int = 2) -> None:
    done = client(coordinator.address.host, str(coordinator.address.port),
                  str(letters.default_data_dir()), str(rounds), "1", "4", "1e-4",
                  "--timing", str(workdir / "timing.txt"))
    assert done.returncode == 0, done.stderr


def metrics_url(proc: ServerProcess, timeout_s: float = 10.0) -> str:
    """The URL the process logged in its metrics_listening event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"event=metrics_listening .*url=(\S+)", proc.log())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise TimeoutError(f"no metrics_listening event in {proc.log_path}")


def scrape(proc: ServerProcess) -> dict[str, dict[tuple, float]]:
    """Samples by name, each keyed by its sorted label items."""
    with urllib.request.urlopen(metrics_url(proc), timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


@pytest.mark.slow
def test_status_prints_every_node_and_the_counters(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=3, loads=[0.0, 0.5, 1.0])
    train(cluster.coordinator, tmp_path)

    done = client("status", str(cluster.coordinator.address))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "nodes 3/3 alive" in lines[0]
    for node in cluster.nodes:
        row = next(line for line in lines if line.startswith(str(node.address)))
        assert " yes " in row
    loads = sorted(float(line.split()[2]) for line in lines[2:5])
    assert loads == [0.0, 0.5, 1.0]
    done_counts = [int(line.split()[4]) for line in lines[2:5]]
    assert sum(done_counts) == 2 * 16  # two rounds of 16 shards
    counters = dict(item.split("=") for item in lines[-1].removeprefix("counters:").split())
    assert counters["rounds"] == "2" and counters["tasks"] == "32"


@pytest.mark.slow
def test_status_watch_refreshes_count_times_and_sees_a_dead_node(make_cluster) -> None:
    cluster = make_cluster(nodes=2, coordinator_args=("--heartbeat-s", "0.2"))
    cluster.nodes[1].kill()

    done = client("status", str(cluster.coordinator.address), "--watch", "0.5",
                  "--count", "3")

    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(every 0.5s, Ctrl-C stops)") == 3
    last = done.stdout.split("Ctrl-C stops)")[-1]
    assert "nodes 1/2 alive" in last
    row = next(line for line in last.splitlines() if line.startswith(str(cluster.nodes[1].address)))
    assert " NO " in row


def test_status_of_an_unreachable_coordinator_fails_cleanly() -> None:
    done = client("status", "127.0.0.1:1", "--timeout", "2")

    assert done.returncode != 0
    assert "cannot reach the coordinator at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_metrics_endpoints_report_the_run(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2, node_args=("--load-delay", "0", *METRICS),
                           coordinator_args=METRICS)
    train(cluster.coordinator, tmp_path, rounds=2)

    coordinator = scrape(cluster.coordinator)
    nodes = [scrape(node) for node in cluster.nodes]

    assert coordinator["fedcluster_coordinator_rounds_total"][()] == 2
    assert coordinator["fedcluster_coordinator_tasks_total"][()] == 32
    assert coordinator["fedcluster_coordinator_retries_total"][()] == 0
    assert coordinator["fedcluster_coordinator_round_seconds_count"][(("outcome", "ok"),)] == 2
    alive = coordinator["fedcluster_coordinator_node_alive"]
    assert {dict(k)["node"] for k in alive} == {str(n.address) for n in cluster.nodes}
    assert set(alive.values()) == {1.0}
    per_node_done = coordinator["fedcluster_coordinator_node_tasks_done_total"]
    assert sum(per_node_done.values()) == 32
    for name in ("fedcluster_coordinator_node_tasks_in_flight",
                 "fedcluster_coordinator_node_failures_total",
                 "fedcluster_coordinator_failures_total"):
        assert name in coordinator
    assert sum(n["fedcluster_node_tasks_done_total"][()] for n in nodes) == 32
    assert sum(n["fedcluster_node_service_seconds_count"][()] for n in nodes) == 32
    for n in nodes:
        assert n["fedcluster_node_tasks_in_flight"][()] == 0
        assert n["fedcluster_node_tasks_declined_total"][()] == 0
        assert n["fedcluster_node_shards_cached"][()] > 0
        assert n["fedcluster_node_recent_service_seconds"][()] > 0


def run_on_terminal(argv: list[str], timeout_s: float = 120.0) -> tuple[int, str, str]:
    """Run `argv` with stdout on a pseudo-terminal (100 columns); exit code, output, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=REPO)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        stderr = proc.communicate(timeout=10)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), stderr


@pytest.mark.slow
def test_client_on_a_terminal_shows_task_progress_then_round_lines(make_cluster,
                                                                   tmp_path: Path) -> None:
    # Every task sleeps 0.1 s on one of two nodes: a round takes about a second.
    cluster = make_cluster(nodes=2, loads=[1.0, 1.0], node_args=("--load-delay", "0.1"))
    address = cluster.coordinator.address

    code, output, stderr = run_on_terminal(
        [sys.executable, "-m", "client", address.host, str(address.port),
         str(letters.default_data_dir()), "2", "1", "4", "1e-4",
         "--timing", str(tmp_path / "timing.txt")])

    assert code == 0, stderr
    counts = {int(k) for k in re.findall(r"\b(\d+)/16 \[", output)}
    assert 0 in counts and any(0 < k < 16 for k in counts), output[-2000:]
    assert "task" in output
    lines = [line.strip("\r") for line in output.splitlines()]
    assert any(re.search(r"round 1/2  validation error .* declined 0  failed 0", line)
               for line in lines)
    assert any("round 2/2  validation error" in line for line in lines)


@pytest.mark.slow
def test_piped_client_prints_plain_lines_only(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)

    done = client(cluster.coordinator.address.host, str(cluster.coordinator.address.port),
                  str(letters.default_data_dir()), "2", "1", "4", "1e-4",
                  "--timing", str(tmp_path / "timing.txt"))

    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "/16 [" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("data: 16 training shards, 16000 rows"), done.stdout
    assert [line.split("  ")[0] for line in lines[1:]] == [
        "round 1/2", "round 2/2", "final validation error " + done.stdout.split()[-1]]
