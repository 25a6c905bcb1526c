"""Which scheduling policy finishes rounds first, under which load? Measured, not argued.

For each load setting (all nodes p = 0.2, all 0.5, all 0.8, mixed [0.1, 0.5, 0.2, 0.9],
and the seed's own loads [0.2, 0.5, 0.2, 0.9] at the seed's 3 s load delay) and each
policy (random, round-robin, load-aware) it starts a fresh local cluster of 4
real compute nodes (same per-node seeds every time, so every policy meets the same
draws), runs the same job through the real client, and reads the client's round times
from timing.txt. A loaded node sleeps --load-delay-s before training with probability p;
under load-aware a node may also decline a task with probability p (the seed's
semantics) and the coordinator sends it elsewhere.

Prints the CPU model, a table of mean and p95 round time per policy and setting with the
coordinator's work-stealing counters (steals: tasks taken back unstarted from a busy node
for an idle one; dup: started tasks copied to an idle node; wakes: tasks declined by every
node woken from their backoff to ask an idle node), writes the table as CSV
(--csv, default experiment_policies.csv in the work directory), saves a grouped bar plot
(PNG), and ends with one key=value line of headline figures.

Usage: .venv/bin/python scripts/experiment_policies.py [--rounds 10] [--load-delay-s 0.25]
       [--settings mixed,seed] [--plot experiment_policies.png] [--csv FILE] [--workdir DIR]
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from local_cluster import REPO, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from client.timing import read_timing  # noqa: E402
from idl.gen import Coordinator  # noqa: E402
from idl.rpc import connect  # noqa: E402
from runtime.cli import FiniteRange, ListType, RenamedOption, require_module, run_cli  # noqa: E402

POLICIES = ["random", "round-robin", "load-aware"]
SETTINGS: dict[str, list[float]] = {
    "all 0.2": [0.2] * 4,
    "all 0.5": [0.5] * 4,
    "all 0.8": [0.8] * 4,
    "mixed": [0.1, 0.5, 0.2, 0.9],
    "seed": [0.2, 0.5, 0.2, 0.9],  # the seed's own loads, at its own delay (below)
}
# Settings with a load delay of their own (else --load-delay-s): the seed slept 3 s.
SETTING_DELAY_S: dict[str, float] = {"seed": 3.0}
COUNTERS = ("steals", "steal_duplicates", "steal_wakes", "declined")


def coordinator_counters(address) -> dict[str, int]:
    """The coordinator's status counters (steals, declined, ...)."""
    conn = connect(Coordinator.Client, address, 10.0)
    try:
        return dict(conn.client.status("").counters or {})
    finally:
        conn.close()


def run_job(workdir: Path, loads: list[float], policy: str, args: SimpleNamespace,
            delay_s: float) -> tuple[list[float], dict[str, int]]:
    """The client's wall time of every round of one job on a fresh 4-node cluster, and the
    coordinator's counters after it."""
    workdir.mkdir(parents=True, exist_ok=True)
    timing = workdir / "timing.txt"
    with LocalCluster(workdir) as cluster:
        for i, p in enumerate(loads):
            cluster.add_node(p, "--load-delay-s", str(delay_s), "--seed", str(i + 1),
                             "--log-level", "WARNING")
        coordinator = cluster.add_coordinator(policy, "--seed", "1", "--log-level", "WARNING")
        argv = [
            sys.executable, "-m", "client", coordinator.address.host,
            str(coordinator.address.port), str(args.data), str(args.rounds), str(args.epochs),
            str(args.hidden), str(args.eta), "--timing", str(timing),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"client failed ({policy}, loads {loads}):\n{done.stderr[-2000:]}")
        counters = coordinator_counters(coordinator.address)
    rows = [r for r in read_timing(timing)[1] if r["kind"] == "round"]
    return [float(r["round_s"]) for r in rows], counters


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def plot(results: dict[tuple[str, str], list[float]], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(SETTINGS)
    x = np.arange(len(settings))
    width = 0.26
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for k, policy in enumerate(POLICIES):
        means = [statistics.mean(results[(s, policy)]) for s in settings]
        tails = [p95(results[(s, policy)]) for s in settings]
        pos = x + (k - 1) * width
        bars = ax.bar(pos, means, width, label=f"{policy} (mean)")
        ax.scatter(pos, tails, marker="_", s=300, color=bars.patches[0].get_facecolor(),
                   linewidths=3, zorder=3)
    ax.scatter([], [], marker="_", s=300, color="black", label="p95 (tick)")
    ax.set_xticks(x, [f"{s}\n{SETTINGS[s]}" if s in ("mixed", "seed") else s
                      for s in settings])
    ax.set_xlabel("node load probability p")
    ax.set_ylabel("round time (s)")
    delays = ", ".join(f"{s} {d:g} s" for s, d in SETTING_DELAY_S.items() if s in SETTINGS)
    ax.set_title(f"Round time by scheduling policy: 4 nodes, load delay {args.load_delay_s:g} s"
                 f"{f' ({delays})' if delays else ''}, {args.rounds} rounds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.splitlines()[0])
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Data directory [the default letters data].")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--eta", type=FiniteRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--load-delay-s", "--load-delay", "load_delay_s", cls=RenamedOption,
              type=FiniteRange(min=0, max=3600), default=0.25, show_default=True,
              help="Seconds a loaded node sleeps before training.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to save the plot [experiment_policies.png in the work directory].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to write the table [experiment_policies.csv in the "
              "work directory].")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Logs and timing files [a new temporary directory].")
@click.option("--settings", type=ListType(click.Choice(list(SETTINGS)), name="SETTING,..."),
              default=",".join(SETTINGS), show_default=True,
              help="Load settings to run, comma-separated.")
def cli(**options: object) -> int:
    import letters

    args = SimpleNamespace(**options)
    args.data = args.data or letters.default_data_dir()
    require_module("matplotlib")  # before the runs, not after them
    for name in list(SETTINGS):
        if name not in args.settings:
            del SETTINGS[name]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="policies-"))
    args.plot = args.plot or workdir / "experiment_policies.png"
    args.csv_path = args.csv_path or workdir / "experiment_policies.csv"

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; epochs {args.epochs}, "
          f"h = {args.hidden}, {args.rounds} rounds", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    rows = []
    print(f"{'setting':<10} {'loads':<22} {'delay_s':>7} {'policy':<12} {'mean_s':>8} "
          f"{'p95_s':>8} {'rounds':>6} {'steals':>6} {'dup':>4} {'wakes':>5} {'declined':>8}",
          flush=True)
    for setting, loads in SETTINGS.items():
        delay_s = SETTING_DELAY_S.get(setting, args.load_delay_s)
        for policy in POLICIES:
            slug = f"{setting.replace(' ', '_')}-{policy}"
            times, counters = run_job(workdir / slug, loads, policy, args, delay_s)
            results[(setting, policy)] = times
            row = {"setting": setting, "loads": str(loads), "delay_s": delay_s,
                   "policy": policy, "mean_s": round(statistics.mean(times), 4),
                   "p95_s": round(p95(times), 4), "rounds": len(times),
                   **{name: counters.get(name, 0) for name in COUNTERS}}
            rows.append(row)
            print(f"{setting:<10} {str(loads):<22} {delay_s:7g} {policy:<12} "
                  f"{row['mean_s']:8.3f} {row['p95_s']:8.3f} {len(times):6d} "
                  f"{row['steals']:6d} {row['steal_duplicates']:4d} {row['steal_wakes']:5d} "
                  f"{row['declined']:8d}",
                  flush=True)
    args.csv_path.parent.mkdir(parents=True, exist_ok=True)
    with args.csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(results, args.plot, args)
    print(f"plot: {args.plot}  csv: {args.csv_path}  logs: {workdir}", flush=True)

    summary = {"load_delay_s": args.load_delay_s, "rounds": args.rounds, "epochs": args.epochs}
    for setting in SETTINGS:
        best = min(POLICIES, key=lambda p, s=setting: statistics.mean(results[(s, p)]))
        summary[f"best_{setting.replace(' ', '_')}"] = best
    for mixed in ("mixed", "seed"):
        if mixed not in SETTINGS:
            continue
        la = statistics.mean(results[(mixed, "load-aware")])
        for other in ("random", "round-robin"):
            summary[f"{mixed}_speedup_vs_{other}"] = round(
                statistics.mean(results[(mixed, other)]) / la, 2)
    summary["plot"] = str(args.plot)
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "experiment_policies.py", argv)


if __name__ == "__main__":
    main()
