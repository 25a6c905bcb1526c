"""scripts/analyze_timing.py on the timing.txt of a real run: table, summary.csv, plots."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import letters
from client.timing import read_timing
from harness import REPO

sys.path.insert(0, str(REPO / "scripts"))

from timing_analysis import percentile  # noqa: E402

ANALYZE = REPO / "scripts" / "analyze_timing.py"
PNGS = ("round_times.png", "task_durations.png", "time_breakdown.png")


def run_job(coordinator, workdir: Path, *extra: str) -> Path:
    """A short real job (3 rounds, 16 shards of the default letters data); its timing.txt."""
    workdir.mkdir(parents=True)
    timing = workdir / "timing.txt"
    done = subprocess.run(
        [sys.executable, "-m", "client", coordinator.address.host,
         str(coordinator.address.port), str(letters.default_data_dir()), "3", "2", "8", "1e-4",
         "--timing", str(timing), *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return timing


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ANALYZE), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_percentile_matches_numpy() -> None:
    values = [0.3, 1.7, 0.2, 5.0, 2.2, 2.2, 0.9]

    for q in (0, 5, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), abs=1e-12)
    assert percentile([4.0], 95) == 4.0


@pytest.mark.slow
def test_analysis_of_real_runs_matches_their_timing_files(make_cluster, tmp_path: Path) -> None:
    # Prepare: two runs, one per policy, one of them on a loaded node (short delays).
    runs = {}
    for policy, loads in (("round-robin", [0.0, 0.0]), ("load-aware", [0.6, 0.0])):
        cluster = make_cluster(nodes=2, policy=policy, loads=loads,
                               node_args=("--load-delay", "0.05", "--seed", "3"))
        runs[policy] = run_job(cluster.coordinator, tmp_path / policy)
    out = tmp_path / "analysis"

    # Execute
    done = analyze(*(str(p) for p in runs.values()), "--out", str(out))

    # Assert: the table names both runs, the CSV agrees with the files, the plots are real.
    assert done.returncode == 0, done.stderr
    assert "round-robin" in done.stdout and "load-aware" in done.stdout
    with (out / "summary.csv").open(newline="") as f:
        table = {row["label"]: row for row in csv.DictReader(f)}
    assert set(table) == set(runs)
    for label, path in runs.items():
        _, rows = read_timing(path)
        row = table[label]
        tasks = [r for r in rows if r["kind"] == "task"]
        round_s = [float(r["round_s"]) for r in rows if r["kind"] == "round"]
        assert int(row["rounds"]) == len(round_s) == 3
        assert int(row["tasks"]) == len(tasks) == 48
        assert row["policy"] == label
        assert float(row["round_mean_s"]) == pytest.approx(np.mean(round_s), abs=1e-6)
        assert float(row["round_p50_s"]) == pytest.approx(np.median(round_s), abs=1e-6)
        assert float(row["round_p95_s"]) == pytest.approx(np.percentile(round_s, 95), abs=1e-6)
        assert int(row["attempts"]) == sum(int(t["attempts"]) for t in tasks)
        assert int(row["failures"]) == sum(int(t["failures"]) for t in tasks)
        assert int(row["declined"]) == sum(int(t["declined"]) for t in tasks)
        per_node = dict(item.split("=") for item in row["tasks_per_node"].split(";"))
        assert {n: int(c) for n, c in per_node.items()} == Counter(t["node"] for t in tasks)
        totals = {p: sum(float(t[p]) for t in tasks)
                  for p in ("load_delay_s", "compute_s", "wait_s", "transfer_s")}
        for part, total in totals.items():
            assert float(row[part]) == pytest.approx(total, abs=1e-5)
            share = float(row[part.removesuffix("_s") + "_share"])
            assert share == pytest.approx(total / sum(totals.values()), abs=1e-4)
    assert float(table["round-robin"]["load_delay_s"]) == 0.0  # no node was loaded
    assert float(table["load-aware"]["load_delay_s"]) > 0.0
    for name in PNGS:
        width, height = png_size(out / name)
        assert width >= 400 and height >= 300
        assert (out / name).stat().st_size > 10_000, f"{name} looks empty"


def test_labels_option_and_bad_input_fail_cleanly(tmp_path: Path) -> None:
    not_timing = tmp_path / "run" / "timing.txt"
    not_timing.parent.mkdir()
    not_timing.write_text("hello\nworld\n")

    wrong_labels = analyze(str(not_timing), "--out", str(tmp_path / "o"), "--labels", "a,b")
    bad_file = analyze(str(not_timing), "--out", str(tmp_path / "o"))

    for done, fragment in ((wrong_labels, "2 labels for 1 timing files"),
                           (bad_file, "not a timing.txt")):
        assert done.returncode != 0
        assert fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
