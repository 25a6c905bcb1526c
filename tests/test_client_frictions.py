"""What a new user meets at the client (issue 11): waiting, declines, errors, checkpoints, data.

Real processes on 127.0.0.1 with OS-picked ports; every process a test starts is stopped by
its PID, also when the test fails.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from client.timing import COLUMNS, read_timing
from harness import REPO, LocalCluster, start_node
from idl.gen import Coordinator
from idl.rpc import Address, connect

TINY = ["1", "1", "4", "1e-4"]  # rounds epochs h eta: a round takes well under a second


def free_address() -> Address:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return Address("127.0.0.1", s.getsockname()[1])


def client_argv(address: Address, data: str, train: list[str], workdir: Path,
                *extra: str) -> list[str]:
    return [sys.executable, "-m", "client", address.host, str(address.port), data, *train,
            "--timing", str(workdir / "timing.txt"), *extra]


def run(argv: list[str], cwd: Path = REPO, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


class Background:
    """A client process whose output goes to files, stopped by PID on cleanup."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = workdir / "client.out", workdir / "client.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)

    def stdout(self) -> str:
        return self.out.read_text()

    def wait(self, timeout_s: float = 60.0) -> tuple[int, str, str]:
        code = self.popen.wait(timeout=timeout_s)
        return code, self.out.read_text(), self.err.read_text()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    started: list[Background] = []

    def start(argv: list[str], workdir: Path) -> Background:
        started.append(Background(argv, workdir))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as c:
        yield c


def coordinator_status(address: Address):
    conn = connect(Coordinator.Client, address, 5.0)
    try:
        return conn.client.status("")
    finally:
        conn.close()


# ------------------------------------------------------------------ waiting is visible


def test_no_node_alive_is_said_within_seconds_and_ctrl_c_says_how_to_resume(
    cluster: LocalCluster, tmp_path: Path, background
) -> None:
    # Prepare: round 1 done on a live node, then a coordinator whose only node is gone.
    node = cluster.add_node(0.0, "--load-delay", "0")
    live = cluster.add_coordinator("round-robin")
    ckpt = tmp_path / "ckpt.npz"
    first = run(client_argv(live.address, "letters", TINY, tmp_path, "--checkpoint", str(ckpt)))
    assert first.returncode == 0, first.stderr
    node.stop()
    lonely = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2",
                                     nodes=[node.address])

    # Execute: resume for two more rounds against it, piped.
    began = time.monotonic()
    proc = background(client_argv(lonely.address, "letters", ["3", *TINY[1:]], tmp_path,
                                  "--checkpoint", str(ckpt), "--resume", "--deadline", "60"),
                      tmp_path / "resumed")
    wait_for(lambda: "waiting:" in proc.stdout(), "waiting line", 15)
    said_after_s = time.monotonic() - began
    proc.popen.send_signal(signal.SIGINT)
    code, out, err = proc.wait()

    # Assert: it said what it waits for within seconds (not at the 60 s deadline), from
    # which round it resumed, and on Ctrl-C what was saved and the command that continues.
    assert said_after_s < 10, said_after_s
    assert "resuming from checkpoint" in out and "holds round 1, round 2 of 3 is next" in out
    waiting = next(line for line in out.splitlines() if line.startswith("waiting:"))
    assert re.search(r"round 2/3, 0/16 tasks done: no node alive \(0 of 1 known\); "
                     r"\d+s left of the round's deadline", waiting), waiting
    assert code == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted after round 1 of 3;"), err
    assert f"{ckpt} holds round 1. To continue: python -m client" in line
    assert "--resume" in line.split("To continue: ")[1].split(), line


def test_deadline_error_describes_the_round_and_suggests_resume_only_with_a_checkpoint(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    coordinator = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.2",
                                          nodes=[free_address()])

    done = run(client_argv(coordinator.address, "letters", TINY, tmp_path, "--deadline", "2"))

    error = one_line_error(done)
    assert "round deadline of 2s passed with 16 of 16 tasks unfinished" in error
    assert "(0 of 1 known nodes alive)" in error
    assert "resume" not in error and "checkpoint" not in error
    assert "waiting: round 1/1, 0/16 tasks done: no node alive (0 of 1 known)" in done.stdout


# ------------------------------------------------------------------ one name per event


def test_a_decline_has_one_name_in_client_line_timing_status_and_logs(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    loaded = cluster.add_node(1.0, "--load-delay", "0")  # declines every task it may
    cluster.add_node(0.0, "--load-delay", "0")
    coordinator = cluster.add_coordinator("load-aware")

    done = run(client_argv(coordinator.address, "letters", TINY, tmp_path))

    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("round 1/1"))
    declined = int(re.search(r"declined (\d+)  failed 0$", line).group(1))
    assert declined > 0, line
    _, rows = read_timing(str(tmp_path / "timing.txt"))
    tasks = [r for r in rows if r["kind"] == "task"]
    assert sum(int(t["declined"]) for t in tasks) == declined
    assert all(t["failures"] == "0" for t in tasks)
    assert all(int(t["attempts"]) == 1 + int(t["declined"]) for t in tasks)
    [round_row] = [r for r in rows if r["kind"] == "round"]
    assert (round_row["declined"], round_row["failures"]) == (str(declined), "0")
    counters = coordinator_status(coordinator.address).counters
    assert counters["declined"] == declined
    assert not {"rejections", "retries", "failures"} & set(counters)
    coordinator_log = coordinator.log()
    assert coordinator_log.count("event=task_declined") == declined
    assert "task_busy" not in coordinator_log
    assert loaded.log().count("event=task_declined") == declined


def test_read_timing_takes_a_str_path_and_reads_format_1(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    header = [c for c in COLUMNS if c != "declined"]
    old.write_text("# format=fedcluster-timing/1\n" + "\t".join(header) + "\n"
                   + "\t".join("round" if c == "kind" else "1" for c in header) + "\n")

    meta, rows = read_timing(str(old))

    assert meta["format"] == "fedcluster-timing/1"
    assert rows[0]["declined"] == "-" and rows[0]["failures"] == "1"


# ------------------------------------------------------------------ errors say what to do


def test_client_pointed_at_a_node_says_a_node_answered(tmp_path: Path) -> None:
    node = start_node(tmp_path / "cluster", 0.0)
    try:
        done = run(client_argv(node.address, "letters", TINY, tmp_path))
    finally:
        node.stop()

    error = one_line_error(done)
    assert f"{node.address} is a compute node, not a coordinator" in error
    assert "resume" not in error


def test_thrift_logger_is_quiet_for_a_node_with_a_bad_coordinator(tmp_path: Path) -> None:
    nowhere = free_address()
    node = start_node(tmp_path / "cluster", 0.0, "--coordinator", str(nowhere),
                      "--log-level", "info")
    try:
        # The node logs its first failed registration after thrift would have complained.
        wait_for(lambda: "event=registration_failed" in node.log(), "a failed registration", 15)
        log = node.log()
    finally:
        node.stop()

    stray = [line for line in log.splitlines()
             if "Could not connect" in line and "event=registration_failed" not in line]
    assert stray == [], log


# ------------------------------------------------------------------ checkpoints are safe


def test_checkpoint_rules(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_node(0.0, "--load-delay", "0")
    address = cluster.add_coordinator("round-robin").address
    ckpt = tmp_path / "ckpt.npz"

    missing = run(client_argv(address, "letters", TINY, tmp_path, "--checkpoint", str(ckpt),
                              "--resume"))
    first = run(client_argv(address, "letters", TINY, tmp_path, "--checkpoint", str(ckpt)))
    saved = ckpt.read_bytes()
    again = run(client_argv(address, "letters", ["2", *TINY[1:]], tmp_path,
                            "--checkpoint", str(ckpt)))
    resumed = run(client_argv(address, "letters", ["2", *TINY[1:]], tmp_path,
                              "--checkpoint", str(ckpt), "--resume"))

    assert f"--resume: no checkpoint at {ckpt}" in one_line_error(missing)
    assert not missing.stdout.count("round ")
    assert first.returncode == 0, first.stderr
    error = one_line_error(again)
    assert f"checkpoint {ckpt} holds round 1: pass --resume" in error and "remove" in error
    assert "round 1/" not in again.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoint {ckpt}: it holds round 1, round 2 of 2 is next" in (
        resumed.stdout)
    assert [line.split()[1] for line in resumed.stdout.splitlines()
            if line.startswith("round ")] == ["2/2"]
    assert saved != ckpt.read_bytes()  # round 2 was saved over round 1 by the resumed run


# ------------------------------------------------------------------ data is summarised


def test_data_is_summarised_and_classes_without_rows_are_a_warning(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = [f"{i % 7},{i % 5},{(3 * i) % 11},{i % 2},{i % 3}" for i in range(60)]
    (data / "train_1.txt").write_text("\n".join(rows[:30]) + "\n")
    (data / "train_2.txt").write_text("\n".join(rows[30:]) + "\n1,2,3,4,9\n")  # typo: 9
    (data / "validate_1.txt").write_text("\n".join(rows[:10]) + "\n")
    cluster.add_node(0.0, "--load-delay", "0")
    address = cluster.add_coordinator("round-robin").address

    done = run(client_argv(address, str(data), TINY, tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"data: 2 training shards, 61 rows, 4 attributes, 10 classes; 10 validation rows "
        f"({data})")
    assert ("warning: 6 of 10 classes have no training rows (3-8); the model still has 10 "
            "outputs") in done.stderr, done.stderr


# ------------------------------------------------------------------ the seed's command


@pytest.mark.parametrize("where", ["repository root", "elsewhere"])
def test_seed_command_with_letters_trains_on_the_builtin_dataset(
    cluster: LocalCluster, tmp_path: Path, where: str
) -> None:
    cluster.add_node(0.0, "--load-delay", "0")
    address = cluster.add_coordinator("round-robin").address
    cwd = REPO if where == "repository root" else tmp_path

    done = run(client_argv(address, "letters", TINY, tmp_path), cwd=cwd)
    unknown = run(client_argv(address, "no-such-data", TINY, tmp_path), cwd=cwd)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("data: letters is the built-in letters "
                                                  "dataset (")
    assert done.stdout.splitlines()[1].startswith("data: 16 training shards, 16000 rows")
    assert any(line.startswith("round 1/1") for line in done.stdout.splitlines())
    assert "does not exist and is not a built-in dataset (letters)" in one_line_error(unknown)
