"""scripts/bench_serving.py in its tiny configuration: a real cluster, a table, a plot, goals."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from test_analysis import png_size

from harness import REPO


@pytest.mark.slow
def test_quick_run_writes_table_plot_verdicts_and_a_key_value_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_serving.py"), "--quick", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    with (tmp_path / "serving.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["workload"], r["clients"]) for r in rows] == [
        (w, c) for w in ("single/batching", "single/no-batching", "1000-row/batching")
        for c in ("1", "8")]
    assert all(int(r["requests"]) > 0 and r["errors"] == "0" for r in rows), rows
    assert all(float(r["p50_ms"]) <= float(r["p99_ms"]) for r in rows)
    width, height = png_size(tmp_path / "serving.png")
    assert width >= 800 and height >= 300
    assert lines[0].startswith("machine: ") and "OPENBLAS_NUM_THREADS=1" in lines[0]
    assert sum(line.startswith("goal ") and line.endswith(("-> met", "-> MISSED"))
               for line in lines) == 3
    last = dict(part.split("=", 1) for part in lines[-1].split())
    assert {"batching_ratio", "big_vs_inprocess", "light_p99_ms", "goals_met"} <= set(last)
