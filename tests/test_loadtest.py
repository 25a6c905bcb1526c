"""scripts/loadtest.py against real clusters: raw and summary CSV, plots, reports agree."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_analysis import png_size

from harness import REPO

LOADTEST = REPO / "scripts" / "loadtest.py"
FIGURES = ("throughput.png", "latency_p95.png", "error_rate.png")


def loadtest(*args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOADTEST), *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def report_table(report: str, first_column: str = "level") -> list[dict[str, str]]:
    """The markdown table whose header starts with `first_column`, as dicts of cells."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")],
                             strict=True)))
    return rows


def check_summary_against_raw(summary: list[dict[str, str]], raw: list[dict[str, str]]) -> None:
    """Recompute every summary row from raw.csv with numpy."""
    for row in summary:
        level = [r for r in raw if r["level"] == row["level"]]
        chosen = [r for r in level if row["kind"] in ("all", r["kind"])]
        ok_ms = [float(r["latency_s"]) * 1000 for r in chosen if r["ok"] == "1"]
        wall_s = max(float(r["end_s"]) for r in level) - min(float(r["start_s"]) for r in level)
        assert int(row["requests"]) == len(chosen)
        assert int(row["ok"]) == len(ok_ms)
        assert int(row["errors"]) == len(chosen) - len(ok_ms)
        assert float(row["error_rate"]) == pytest.approx(1 - len(ok_ms) / len(chosen), abs=1e-4)
        assert float(row["wall_s"]) == pytest.approx(wall_s, abs=1e-3)
        assert float(row["throughput_rps"]) == pytest.approx(len(ok_ms) / wall_s, rel=1e-3)
        if ok_ms:
            for q in (50, 95, 99):
                assert float(row[f"latency_p{q}_ms"]) == pytest.approx(np.percentile(ok_ms, q),
                                                                       abs=1e-3)


@pytest.mark.slow
def test_short_run_writes_csvs_plots_and_a_report_that_agree(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = loadtest("--local", "2", "--concurrency", "1,3", "--duration", "1.5",
                    "--status-share", "0.3", "--out", str(out), "--label", "two")

    assert done.returncode == 0, done.stderr
    run_dir = out / "two"
    raw = read_csv(run_dir / "raw.csv")
    summary = read_csv(run_dir / "summary.csv")
    assert {r["level"] for r in raw} == {"1", "3"}
    assert {r["kind"] for r in raw} == {"train", "status"}
    assert all(r["ok"] == "1" for r in raw), [r["error"] for r in raw if r["ok"] != "1"][:3]
    assert {r["client"] for r in raw if r["level"] == "3"} == {"0", "1", "2"}
    for level in ("1", "3"):  # each level ran for about its duration, not much longer
        starts = [float(r["start_s"]) for r in raw if r["level"] == level]
        assert max(starts) - min(starts) < 1.6
    assert [(r["level"], r["kind"]) for r in summary] == [
        (lv, k) for lv in ("1", "3") for k in ("all", "train", "status")]
    check_summary_against_raw(summary, raw)
    report = (run_dir / "report.md").read_text()
    assert report_table(report) == summary  # the report's numbers are the CSV's
    assert f"| cores | {os.cpu_count()} |" in report
    assert f"| Python | {platform.python_version()} |" in report
    assert f"numpy {np.__version__}" in report
    assert "| compute nodes | 2 (2 alive at start) |" in report
    assert "1, 3 virtual clients; 1.5 s per level" in report
    for name in FIGURES:
        assert f"]({name})" in report
        width, height = png_size(run_dir / name)
        assert width >= 400 and height >= 300 and (run_dir / name).stat().st_size > 10_000


@pytest.mark.slow
def test_count_bound_runs_compare_in_one_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for nodes in ("1", "2"):
        done = loadtest("--local", nodes, "--concurrency", "1,2", "--requests", "7",
                        "--out", str(out))
        assert done.returncode == 0, done.stderr

    done = loadtest("--out", str(out), "--compare", "nodes1,nodes2")

    assert done.returncode == 0, done.stderr
    for label in ("nodes1", "nodes2"):
        raw = read_csv(out / label / "raw.csv")
        assert [sum(r["level"] == lv for r in raw) for lv in ("1", "2")] == [7, 7]
        assert json.loads((out / label / "run.json").read_text())["environment"]["nodes"] == \
            int(label[-1])
    target = out / "compare_nodes1_nodes2"
    report = (target / "report.md").read_text()
    sections = report.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["nodes1", "nodes2"]
    for label, section in zip(("nodes1", "nodes2"), sections, strict=True):
        assert report_table(section) == read_csv(out / label / "summary.csv")
        assert f"| compute nodes | {label[-1]} " in section
    for name in FIGURES:
        png_size(target / name)


@pytest.mark.slow
def test_failed_requests_are_recorded_as_errors(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=0)  # rounds cannot run: NoNodesAvailable at the deadline

    done = loadtest("--coordinator", str(cluster.coordinator.address), "--concurrency", "2",
                    "--requests", "6", "--deadline", "0.3", "--status-share", "0.5",
                    "--out", str(tmp_path), "--label", "nonodes")

    assert done.returncode == 0, done.stderr
    raw = read_csv(tmp_path / "nonodes" / "raw.csv")
    assert len(raw) == 6
    for r in raw:
        assert (r["ok"] == "1") == (r["kind"] == "status"), r
    assert any("no" in r["error"].lower() and "node" in r["error"].lower() for r in raw)
    assert {r["kind"] for r in raw} == {"train", "status"}  # client 0 draws train first
    summary = {r["kind"]: r for r in read_csv(tmp_path / "nonodes" / "summary.csv")}
    assert summary["train"]["error_rate"] == "1.0000"
    assert summary["train"]["throughput_rps"] == "0.000"
    assert summary["status"]["error_rate"] == "0.0000"
    check_summary_against_raw(list(summary.values()), raw)


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    cases = [
        (("--out", str(tmp_path)), "exactly one of --coordinator"),
        (("--local", "1", "--concurrency", "0,2", "--out", str(tmp_path)), "between 1 and"),
        (("--coordinator", "127.0.0.1:1", "--out", str(tmp_path)), "cannot use the coordinator"),
        (("--out", str(tmp_path), "--compare", "missing"), "no summary.csv"),
        (("--gateway", "http://127.0.0.1:1", "--workload", "http", "--out", str(tmp_path)),
         "cannot use the gateway at http://127.0.0.1:1"),
        (("--gateway", "127.0.0.1:1", "--out", str(tmp_path)), "--gateway is for --workload http"),
        (("--local", "1", "--gateway", "127.0.0.1:1", "--workload", "http", "--out",
          str(tmp_path)), "exactly one of --coordinator HOST:PORT, --local N or --gateway URL"),
        (("--local", "1", "--gateway-arg=--rate-per-s=1", "--out", str(tmp_path)),
         "--gateway-arg is for a gateway the script starts"),
        (("--local", "1", "--workload", "http", "--gateway-arg=--max-hidden=0", "--out",
          str(tmp_path)), "could not start the gateway: error: Invalid value for '--max-hidden'"),
    ]
    for args, fragment in cases:
        done = loadtest(*args, timeout_s=60)
        assert done.returncode != 0
        assert fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_predict_workload_records_predictions_in_csvs_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = loadtest("--local", "1", "--workload", "predict", "--predict-rows", "3",
                    "--concurrency", "1,2", "--duration", "0.5", "--status-share", "0.2",
                    "--out", str(out), "--label", "serve")

    assert done.returncode == 0, done.stderr
    run_dir = out / "serve"
    raw = read_csv(run_dir / "raw.csv")
    summary = read_csv(run_dir / "summary.csv")
    assert {r["kind"] for r in raw} == {"predict", "status"}
    assert all(r["ok"] == "1" for r in raw), [r["error"] for r in raw if r["ok"] != "1"][:3]
    assert [(r["level"], r["kind"]) for r in summary] == [
        (lv, k) for lv in ("1", "2") for k in ("all", "predict", "status")]
    check_summary_against_raw(summary, raw)
    report = (run_dir / "report.md").read_text()
    assert report_table(report) == summary
    assert "workload `predict`" in report and "`predict()` of 3 letters row(s)" in report
    for name in FIGURES:
        png_size(run_dir / name)


@pytest.mark.slow
def test_http_workload_loads_a_gateway_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = loadtest("--local", "1", "--workload", "http", "--concurrency", "1,3",
                    "--duration-s", "1", "--out", str(out), "--label", "gw", timeout_s=120)

    assert done.returncode == 0, done.stderr
    run_dir = out / "gw"
    raw = read_csv(run_dir / "raw.csv")
    summary = read_csv(run_dir / "summary.csv")
    assert {r["level"] for r in raw} == {"1", "3"}
    assert {r["kind"] for r in raw} == {"submit", "job", "leaderboard", "status"}
    assert not [r["error"] for r in raw if r["error"].startswith("HTTP 5")]
    assert all(r["ok"] == "1" for r in raw), [r["error"] for r in raw if r["ok"] != "1"][:3]
    assert {r["client"] for r in raw if r["level"] == "3"} == {"0", "1", "2"}
    # a client's first request submits (there is no job of its to read yet)
    firsts = {}
    for r in raw:
        firsts.setdefault(r["client"], r)
    assert {r["kind"] for r in firsts.values()} <= {"submit", "leaderboard", "status"}
    assert [(r["level"], r["kind"]) for r in summary] == [
        (lv, k) for lv in ("1", "3") for k in ("all", "submit", "job", "leaderboard", "status")]
    for row in summary:
        assert int(row["requests"]) > 0 and float(row["throughput_rps"]) > 0, row
        assert 0 < float(row["latency_p50_ms"]) <= float(row["latency_p99_ms"]) < 30_000, row
    check_summary_against_raw(summary, raw)
    assert read_csv(run_dir / "errors.csv") == []
    report = (run_dir / "report.md").read_text()
    assert report_table(report) == summary
    assert "workload `http`" in report and "No request failed." in report
    assert "| gateway | http://127.0.0.1:" in report and "--max-queued-per-user 100000" in report
    assert "| compute nodes | 1 (1 alive at start) |" in report
    for name in FIGURES:
        png_size(run_dir / name)


@pytest.mark.slow
def test_http_workload_against_a_running_gateway_counts_429_as_declined(
        make_cluster, tmp_path: Path) -> None:
    import sqlite3

    from harness import start_gateway

    cluster = make_cluster(nodes=1)
    db = tmp_path / "gw" / "gateway.db"
    gateway = start_gateway(tmp_path / "gw", [cluster.coordinator.address], "--rate-per-s", "3",
                            "--max-running", "1", db=db)
    try:
        done = loadtest("--gateway", f"http://{gateway.address}", "--workload", "http",
                        "--concurrency", "2", "--requests", "30", "--status-share", "0",
                        "--http-mix", "1,1,0", "--out", str(tmp_path / "out"), "--label", "limited",
                        timeout_s=120)
        queued = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    finally:
        gateway.stop()

    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "out" / "limited"
    raw = read_csv(run_dir / "raw.csv")
    assert len(raw) == 30 and {r["kind"] for r in raw} <= {"submit", "job"}
    assert 0 < sum(r["ok"] == "1" for r in raw) < 30
    assert {r["error"].split(":")[0] for r in raw if r["ok"] != "1"} == {"HTTP 429"}
    errors = read_csv(run_dir / "errors.csv")
    declined = sum(r["ok"] != "1" for r in raw)
    assert {"level": "2", "kind": "all", "status": "HTTP 429", "count": str(declined)} in errors
    report = (run_dir / "report.md").read_text()
    assert report_table(report, "level | kind | status") == errors
    assert "`HTTP 429` is the gateway declining" in report
    assert "running before the load test" in report
    assert queued == 0, done.stderr  # the run's jobs still waiting were cancelled
