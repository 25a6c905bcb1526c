"""The time-to-accuracy benchmark through real processes: it reports a hit, and it can fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "bench_time_to_accuracy.py"
SHORT = ["--rounds", "2", "--epochs", "1", "--hidden", "16"]


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    import letters

    return subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(letters.default_data_dir()),
         "--plot", str(tmp_path / "tta.png"), *SHORT, *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )


def verdict(stdout: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in stdout.strip().splitlines()[-1].split())


def test_reachable_target_reports_time_error_and_plot(tmp_path: Path) -> None:
    done = bench(tmp_path, "--target", "0.9")

    assert done.returncode == 0, done.stdout + done.stderr
    v = verdict(done.stdout)
    assert v["reached"] == "yes" and v["goal_met"] == "yes" and v["target"] == "0.9"
    assert 0 < float(v["cluster_ready_s"]) < float(v["time_to_target_s"]) < 15
    assert 0 <= float(v["error"]) <= 0.9
    assert len(re.findall(r"^\s+[\d.]+\s+\d\s+[\d.]+%", done.stdout, re.MULTILINE)) == 2
    assert (tmp_path / "tta.png").read_bytes().startswith(b"\x89PNG")


def test_unreachable_target_says_so_and_exits_non_zero(tmp_path: Path) -> None:
    done = bench(tmp_path, "--target", "0.001")

    assert done.returncode != 0
    assert "NOT reached" in done.stdout
    v = verdict(done.stdout)
    assert v["reached"] == "no" and v["time_to_target_s"] == "nan"
    assert float(v["error"]) > 0.001


def test_missing_data_explains_itself(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)

    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--data DIR is required" in done.stderr


def test_strategy_and_schedule_reach_the_client_and_the_plot(tmp_path: Path) -> None:
    done = bench(tmp_path, "--target", "0.9", "--strategy", "fedavgm", "--server-momentum",
                 "0.5", "--lr-schedule", "cosine")

    assert done.returncode == 0, done.stdout + done.stderr
    client_line = next(line for line in done.stdout.splitlines() if line.startswith("client: "))
    assert client_line.endswith("--strategy fedavgm --server-momentum 0.5 --lr-schedule cosine")
    assert verdict(done.stdout)["reached"] == "yes"


def test_an_option_the_strategy_does_not_use_stops_before_any_cluster(tmp_path: Path) -> None:
    done = bench(tmp_path, "--beta2", "0.9")

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --beta2 applies to fedadam, fedyogi, not to "
                                   "--strategy fedavg")
    assert "cluster ready" not in done.stdout
