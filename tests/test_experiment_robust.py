"""The robust-aggregation experiment through real processes, at a tiny size.

Two rounds of a small model: enough to check that the script runs the clean and the
poisoned cluster, counts the poisoned node's tasks, and writes sane numbers into its
CSV files, report and plot. What the figures mean is the README's business.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "experiment_robust.py"
TINY = ["--rounds", "2", "--epochs", "1", "--hidden", "16"]


def experiment(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *TINY, *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def verdict(stdout: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in stdout.strip().splitlines()[-1].split())


def test_a_scaled_node_breaks_fedavg_not_trimmed_mean_and_the_files_say_so(
    tmp_path: Path,
) -> None:
    done = experiment(tmp_path, "--modes", "scale", "--strategies", "fedavg,trimmed-mean")

    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    with open(out / "runs.csv", newline="") as file:
        runs = {(r["mode"], r["strategy"]): r for r in csv.DictReader(file)}
    assert set(runs) == {(m, s) for m in ("none", "scale") for s in ("fedavg", "trimmed-mean")}
    clean, scaled = runs[("none", "fedavg")], runs[("scale", "fedavg")]
    for run in (clean, scaled):
        assert run["failure"] == "" and run["rounds_done"] == "2"
        assert 0 < float(run["final_error"]) < 1
    # Round-robin deals the 16 shards in turn: the poisoned node trains 4 every round.
    assert clean["poisoned_tasks_per_round"] == "0/16" and clean["poisoned_nodes"] == "0"
    assert scaled["poisoned_tasks_per_round"] == "4/16" and scaled["poisoned_nodes"] == "1"
    assert float(clean["points_above_clean"]) == 0 and clean["within_goal"] == "yes"
    # One update x100 among 16 moves the average 25 times as far: FedAvg ends far worse.
    assert float(scaled["final_error"]) > float(clean["final_error"]) + 0.05
    assert scaled["within_goal"] == "no"
    # Trimmed mean (a quarter cut at each end) drops the four scaled updates.
    trimmed = runs[("scale", "trimmed-mean")]
    assert trimmed["failure"] == "" and trimmed["poisoned_tasks_per_round"] == "4/16"
    assert abs(float(trimmed["points_above_clean"])) < 2.0
    assert float(trimmed["own_clean_error"]) == float(runs[("none", "trimmed-mean")]
                                                       ["final_error"])
    with open(out / "rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    assert [(r["mode"], r["strategy"], r["round"]) for r in rounds] == [
        (m, s, r) for m in ("none", "scale") for s in ("fedavg", "trimmed-mean")
        for r in ("1", "2")]
    assert rounds[1]["validation_error"] == clean["final_error"]
    report = (out / "report.md").read_text()
    assert "| strategy | clean (no node poisoned) | scale |" in report
    assert "| trimmed-mean |" in report
    assert "scale: fedavg +" in report and "NOT within 1" in report
    assert "against its own clean" in report
    # ... and the same 4 shards every round: the poisoned node's shards are never seen honestly.
    shards = re.search(r"shards they trained over all rounds: scale ((?:train_\S+ ?)+)\.",
                       report)
    assert shards is not None and len(shards.group(1).split()) == 4, report
    assert (out / "experiment_robust.png").read_bytes().startswith(b"\x89PNG")
    v = verdict(done.stdout)
    assert v["fedavg_broken_modes"] == "scale" and v["goal_strategies"] == "trimmed-mean"
    assert v["goal_met"] in ("yes", "no")
    assert float(v["clean_fedavg_error"]) == pytest.approx(float(clean["final_error"]))


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    done = experiment(tmp_path, "--nodes", "2", "--poisoned", "2")

    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: Invalid value for --poisoned: 2 poisoned of 2 nodes leaves no clean node"]
