"""Where a run's time went: pure functions over timing.txt rows (see client/timing.py).

A run is one timing.txt. Round times are the client's wall time per round (`round_s`);
task times are the coordinator's view of each task (`end_s - start_s`), split into the
node's load delay, compute and queue wait, and the rest (`transfer_s`: RPC, serialisation,
retries). `declined` counts tries a loaded node turned away; `failures` counts tries that
failed (a decline is not a failure; files of format /1 counted both as failures). Shares
are of the summed task time, so they add up to 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PARTS = ("load_delay_s", "compute_s", "wait_s", "transfer_s")
PART_LABELS = {
    "load_delay_s": "load delay",
    "compute_s": "compute",
    "wait_s": "queue wait",
    "transfer_s": "transfer/RPC",
}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), numpy's linear method; nan when there are no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def _num(row: dict[str, str], column: str) -> float:
    """A numeric cell; `-` (not applicable) reads as 0."""
    value = row.get(column, "-")
    return 0.0 if value in ("-", "") else float(value)


@dataclass
class RunSummary:
    """One timing.txt boiled down: the figures behind a summary.csv row."""

    label: str
    policy: str
    rounds: int
    tasks: int
    round_mean_s: float
    round_p50_s: float
    round_p95_s: float
    part_totals_s: dict[str, float]
    attempts: int
    declined: int
    failures: int
    tasks_per_node: dict[str, int] = field(default_factory=dict)

    def share(self, part: str) -> float:
        total = sum(self.part_totals_s.values())
        return self.part_totals_s[part] / total if total > 0 else 0.0


def round_times(rows: Sequence[dict[str, str]]) -> list[tuple[int, float]]:
    """(round, client wall seconds) per round row, in file order."""
    return [(int(r["round"]), _num(r, "round_s")) for r in rows if r["kind"] == "round"]


def task_durations(rows: Sequence[dict[str, str]]) -> dict[str, list[float]]:
    """Task seconds (end_s - start_s, as the coordinator saw them) per node, nodes sorted."""
    by_node: dict[str, list[float]] = {}
    for r in rows:
        if r["kind"] == "task":
            by_node.setdefault(r["node"], []).append(_num(r, "end_s") - _num(r, "start_s"))
    return dict(sorted(by_node.items()))


def summarise(label: str, rows: Sequence[dict[str, str]]) -> RunSummary:
    """Round statistics, tasks per node, where task time went, attempts, declines, failures."""
    tasks = [r for r in rows if r["kind"] == "task"]
    times = [s for _, s in round_times(rows)]
    policies = sorted({r["policy"] for r in rows if r.get("policy", "-") != "-"})
    return RunSummary(
        label=label,
        policy="+".join(policies) or "-",
        rounds=len(times),
        tasks=len(tasks),
        round_mean_s=sum(times) / len(times) if times else math.nan,
        round_p50_s=percentile(times, 50),
        round_p95_s=percentile(times, 95),
        part_totals_s={p: sum(_num(t, p) for t in tasks) for p in PARTS},
        attempts=sum(int(_num(t, "attempts")) for t in tasks),
        declined=sum(int(_num(t, "declined")) for t in tasks),
        failures=sum(int(_num(t, "failures")) for t in tasks),
        tasks_per_node=dict(sorted(Counter(t["node"] for t in tasks).items())),
    )


SUMMARY_COLUMNS = (
    "label", "policy", "rounds", "tasks", "round_mean_s", "round_p50_s", "round_p95_s",
    *PARTS, *(p.removesuffix("_s") + "_share" for p in PARTS),
    "attempts", "declined", "failures", "nodes", "tasks_per_node",
)


def summary_row(s: RunSummary) -> dict[str, str]:
    """A summary.csv row: seconds to 6 decimals, shares to 4; tasks_per_node as node=n;..."""
    row: dict[str, object] = {
        "label": s.label, "policy": s.policy, "rounds": s.rounds, "tasks": s.tasks,
        "round_mean_s": f"{s.round_mean_s:.6f}", "round_p50_s": f"{s.round_p50_s:.6f}",
        "round_p95_s": f"{s.round_p95_s:.6f}",
        "attempts": s.attempts, "declined": s.declined, "failures": s.failures,
        "nodes": len(s.tasks_per_node),
        "tasks_per_node": ";".join(f"{n}={c}" for n, c in s.tasks_per_node.items()),
    }
    for p in PARTS:
        row[p] = f"{s.part_totals_s[p]:.6f}"
        row[p.removesuffix("_s") + "_share"] = f"{s.share(p):.4f}"
    return {k: str(row[k]) for k in SUMMARY_COLUMNS}


def format_table(summaries: Sequence[RunSummary]) -> str:
    """A fixed-width table for the terminal: one line per run, then tasks per node."""
    head = (f"{'run':<16} {'policy':<12} {'rounds':>6} {'tasks':>6} {'mean s':>8} {'p50 s':>8} "
            f"{'p95 s':>8} {'delay':>6} {'compute':>7} {'wait':>6} {'transfer':>8} "
            f"{'attempts':>8} {'declined':>8} {'failures':>8}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        shares = [f"{s.share(p):.0%}" for p in PARTS]
        lines.append(
            f"{s.label[:16]:<16} {s.policy[:12]:<12} {s.rounds:>6} {s.tasks:>6} "
            f"{s.round_mean_s:>8.3f} {s.round_p50_s:>8.3f} {s.round_p95_s:>8.3f} "
            f"{shares[0]:>6} {shares[1]:>7} {shares[2]:>6} {shares[3]:>8} "
            f"{s.attempts:>8} {s.declined:>8} {s.failures:>8}"
        )
    lines.append("")
    lines.append("tasks per node (shares are of summed task time: delay + compute + wait + "
                 "transfer)")
    for s in summaries:
        counts = ", ".join(f"{n} {c}" for n, c in s.tasks_per_node.items()) or "none"
        lines.append(f"  {s.label}: {counts}")
    return "\n".join(lines)
