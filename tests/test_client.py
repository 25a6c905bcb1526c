"""The client as a user meets it: its command line, its messages, its files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_training_e2e import model_bytes, round_errors, run_client

from client.timing import COLUMNS, read_timing
from harness import REPO


def client(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def assert_clean_failure(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, a readable message, and no traceback."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_dataset(directory: Path, n_features: int, n_classes: int, n_shards: int,
                  rows: int, seed: int) -> Path:
    """A learnable synthetic dataset in the seed's format: class = argmax of a linear map."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    weights = rng.standard_normal((n_features, n_classes))

    def block(n: int) -> str:
        x = rng.integers(0, 16, size=(n, n_features))
        y = np.argmax((x - 7.5) @ weights, axis=1)
        rows = (",".join(map(str, [*r, label])) for r, label in zip(x, y, strict=True))
        return "".join(line + "\n" for line in rows)

    for i in range(1, n_shards + 1):
        (directory / f"train_part{i}.txt").write_text(block(rows))
    (directory / "validate_part.txt").write_text(block(rows))
    return directory


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["0", "75", "24", "1e-4"], "ROUNDS"),
        (["3", "0", "24", "1e-4"], "EPOCHS"),
        (["3", "75", "0", "1e-4"], "H"),
        (["3", "75", "24", "0"], "ETA"),
        (["3", "75", "24", "-1"], "ETA"),
        (["3", "75", "24", "nan"], "ETA"),
        (["3", "75", "24", "inf"], "ETA"),
        (["3", "75", "24", "fast"], "ETA"),
    ],
)
def test_bad_hyperparameters_are_refused_before_anything_runs(args, complaint) -> None:
    done = client("127.0.0.1", "9", str(REPO / "letters" / "data"), *args)

    assert_clean_failure(done, complaint)


def test_bad_paths_and_addresses_are_refused(tmp_path: Path) -> None:
    assert_clean_failure(client("127.0.0.1", "9", str(tmp_path / "nope"), "1", "1", "4", "0.1"),
                         "does not exist")
    assert_clean_failure(client("127.0.0.1", "99999", str(tmp_path), "1", "1", "4", "0.1"),
                         "COORDINATOR_PORT")
    assert_clean_failure(client("127.0.0.1", "9", str(REPO / "letters" / "data"), "1", "1", "4",
                                "0.1", "--coordinators", "nohost"), "host:port")


def test_malformed_data_names_file_and_line(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 4, 3, 2, 20, seed=1)
    lines = (data / "train_part2.txt").read_text().splitlines()
    lines[6] = lines[6] + ",9"
    (data / "train_part2.txt").write_text("\n".join(lines) + "\n")

    done = client("127.0.0.1", "9", str(data), "1", "1", "4", "0.1")

    assert_clean_failure(done, "train_part2.txt line 7")


def test_unreachable_coordinator_is_a_clear_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 4, 3, 2, 20, seed=1)

    done = client("127.0.0.1", str(free_port()), str(data), "1", "1", "4", "0.1",
                  "--timing", str(tmp_path / "timing.txt"))

    assert_clean_failure(done, "no coordinator could run the round")


@pytest.mark.slow
def test_another_dataset_trains_without_code_change(make_cluster, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_features=7, n_classes=5, n_shards=3, rows=300,
                         seed=4)
    cluster = make_cluster(nodes=2)

    done = run_client(cluster.coordinator, tmp_path / "run", data_dir=data,
                      train_args=["4", "30", "16", "0.001", "--batch-size", "32",
                                  "--momentum", "0.9"])

    assert done.returncode == 0, done.stderr
    errors = round_errors(done.stdout)
    assert len(errors) == 4 and errors[-1] < 30.0 and errors[-1] < errors[0], done.stdout
    with np.load(tmp_path / "run" / "model.npz") as model:
        assert model["w1"].shape == (7, 16) and model["w2"].shape == (16, 5)


@pytest.mark.slow
def test_timing_file_has_a_row_per_task_and_per_round(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)

    done = run_client(cluster.coordinator, tmp_path, train_args=["2", "5", "8", "1e-4"])

    assert done.returncode == 0, done.stderr
    meta, rows = read_timing(tmp_path / "timing.txt")
    assert meta["format"] == "fedcluster-timing/2" and meta["shards"] == "16"
    assert all(list(row) == list(COLUMNS) for row in rows)
    tasks = [r for r in rows if r["kind"] == "task"]
    rounds = [r for r in rows if r["kind"] == "round"]
    assert len(tasks) == 32 and [r["round"] for r in rounds] == ["1", "2"]
    nodes = {str(n.address) for n in cluster.nodes}
    assert {r["node"] for r in tasks} <= nodes
    for r in tasks:
        assert float(r["end_s"]) >= float(r["start_s"]) >= 0
        assert float(r["compute_s"]) > 0 and int(r["n_samples"]) == 1000
    assert float(rounds[-1]["validation_error"]) == pytest.approx(
        round_errors(done.stdout)[-1] / 100, abs=5e-5)


@pytest.mark.slow
def test_resume_after_a_stop_ends_with_the_same_weights(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)
    train = ["4", "10", "8", "1e-3"]
    whole = run_client(cluster.coordinator, tmp_path / "whole", train_args=train)
    ckpt = tmp_path / "part" / "ckpt.npz"
    first = run_client(cluster.coordinator, tmp_path / "part", "--checkpoint", str(ckpt),
                       train_args=["2", *train[1:]])

    resumed = run_client(cluster.coordinator, tmp_path / "part", "--checkpoint", str(ckpt),
                         "--resume", train_args=train)

    assert whole.returncode == first.returncode == resumed.returncode == 0, resumed.stderr
    assert [line.split()[1] for line in resumed.stdout.splitlines()
            if line.startswith("round")] == ["3/4", "4/4"]
    assert model_bytes(tmp_path / "part" / "model.npz") == model_bytes(
        tmp_path / "whole" / "model.npz")


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_run(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1)
    ckpt = tmp_path / "ckpt.npz"
    run_client(cluster.coordinator, tmp_path, "--checkpoint", str(ckpt),
               train_args=["1", "2", "8", "1e-3"])

    done = run_client(cluster.coordinator, tmp_path, "--checkpoint", str(ckpt), "--resume",
                      train_args=["2", "2", "16", "1e-3"])

    assert_clean_failure(done, "different hidden")
