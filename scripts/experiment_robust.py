"""With 1 of 4 nodes poisoned, which aggregation keeps the model? Measured, not argued.

For each poisoning mode (compute_node --poison sign-flip, scale, noise) and each strategy
(the client's --strategy: fedavg, median, trimmed-mean, krum, multi-krum) it starts a
fresh local cluster of --nodes real compute nodes, the last --poisoned of them poisoned,
runs the same job through the real client (`python -m client`), and reads the validation
error of every round and the node that trained every task from the client's timing.txt.
The same job runs first on a clean cluster (no node poisoned) with every strategy: the
clean FedAvg run is the yardstick of the goal, the other clean runs say what a robust
strategy costs when nobody attacks.

Why every run is reproducible: the client's initial weights come from --seed, node i
gets --seed i+1 (the seed of its noise when poisoned, drawn per task from the shard and
the weights trained from), the coordinator --seed 1, and training and aggregation are
deterministic; so the same settings give the same table on any run.

Scheduling is round-robin, which deals the shards to the nodes in turn, so a poisoned
node trains exactly its share (shards x poisoned / nodes: 4 of the 16 default shards a
round, the same 4 every round) unless a task is retried elsewhere. The script does not
assume it: it counts, from timing.txt, the tasks a poisoned node's result was used for in
every round, and reports the range. Krum's f defaults to that expected count, multi-krum's
m to the shards left when f are removed, and trimmed mean's fraction to the poisoned
nodes' share.

Goal (issue 16): median, trimmed mean and Krum end within --goal-points of the clean
FedAvg run's error, where FedAvg does not. The verdict gives each poisoned run's points
above clean FedAvg (the goal as written) and above the same strategy's clean run (what
the attack costs it, apart from what the strategy costs without one). Prints a Markdown
table (final validation error per strategy and mode) and the verdict per mode, writes
runs.csv, rounds.csv, report.md and a plot, and ends with one key=value line of headline
figures.

Usage: .venv/bin/python scripts/experiment_robust.py --out DIR [--data DIR]
       [--modes sign-flip,scale,noise] [--strategies fedavg,median,...] [--plot PNG]
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from client_runs import run_client  # noqa: E402
from local_cluster import REPO, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from compute_node.poison import MODES  # noqa: E402
from mlcore.model import INIT_SCHEMES  # noqa: E402
from runtime.cli import FiniteRange, ListType, require_module, run_cli  # noqa: E402

STRATEGIES = ["fedavg", "median", "trimmed-mean", "krum", "multi-krum"]
GOAL_STRATEGIES = ("median", "trimmed-mean", "krum")  # the ones the goal names
CLEAN = "none"  # the mode of the runs with no poisoned node
CLIENT_TIMEOUT_S = 900


@dataclass
class Run:
    """One client run: its mode (CLEAN or a --poison mode), strategy and what it measured."""

    mode: str
    strategy: str
    errors: list[float] = field(default_factory=list)  # validation error after each round
    poisoned_tasks: list[int] = field(default_factory=list)  # per round
    tasks: list[int] = field(default_factory=list)  # per round
    poisoned_shards: set[str] = field(default_factory=set)  # trained by a poisoned node
    seconds: float = 0.0
    failure: str = ""  # the client's last line on stderr when it exited non-zero

    @property
    def final(self) -> float:
        return self.errors[-1] if self.errors else math.nan


def client_options(args: SimpleNamespace, strategy: str) -> list[str]:
    """The client's options for this strategy (nothing strategy-specific for fedavg)."""
    options = [
        "--seed", str(args.seed), "--batch-size", str(args.batch_size),
        "--momentum", str(args.momentum), "--init", args.init,
    ]
    if args.standardize:
        options.append("--standardize")
    if strategy != "fedavg":  # fedavg is the client's default: runs without --strategy too
        options += ["--strategy", strategy]
    if strategy == "trimmed-mean":
        options += ["--trim-fraction", repr(args.trim_fraction)]
    if strategy in ("krum", "multi-krum"):
        options += ["--krum-f", str(args.krum_f)]
    if strategy == "multi-krum":
        options += ["--krum-m", str(args.krum_m)]
    return options


def run_job(workdir: Path, mode: str, strategy: str, args: SimpleNamespace) -> Run:
    """One job on a fresh cluster whose last `args.poisoned` nodes run --poison `mode`."""
    workdir.mkdir(parents=True, exist_ok=True)
    timing = workdir / "timing.txt"
    run = Run(mode, strategy)
    poisoned: set[str] = set()
    with LocalCluster(workdir) as cluster:
        for i in range(args.nodes):
            extra = ["--load-delay-s", "0", "--seed", str(i + 1), "--log-level", "WARNING"]
            if mode != CLEAN and i >= args.nodes - args.poisoned:
                extra += ["--poison", mode]
            node = cluster.add_node(0.0, *extra)
            if "--poison" in extra:
                poisoned.add(str(node.address))
        coordinator = cluster.add_coordinator("round-robin", "--seed", "1",
                                              "--log-level", "WARNING")
        argv = [
            sys.executable, "-m", "client", coordinator.address.host,
            str(coordinator.address.port), str(args.data), str(args.rounds), str(args.epochs),
            str(args.hidden), repr(args.eta), "--timing", str(timing),
            *client_options(args, strategy),
        ]
        client = run_client(workdir, argv, timing, args.client_timeout_s)
    run.seconds, run.failure, run.errors = client.seconds, client.failure, client.errors
    by_round: dict[int, list[str]] = {}
    for row in client.rows:
        if row["kind"] == "task":
            by_round.setdefault(int(row["round"]), []).append(row["node"])
            if row["node"] in poisoned:
                run.poisoned_shards.add(row["shard"])
    for r in range(1, len(run.errors) + 1):
        nodes = by_round.get(r, [])
        run.tasks.append(len(nodes))
        run.poisoned_tasks.append(sum(n in poisoned for n in nodes))
    return run


# ------------------------------------------------------------------ verdict and report


def points(run: Run, clean: float) -> float:
    """Percentage points above the clean FedAvg error (negative: better than it)."""
    return 100.0 * (run.final - clean)


def within(run: Run, clean: float, goal_points: float) -> bool:
    """The run finished every round and ends within the goal of the clean error."""
    return not run.failure and math.isfinite(run.final) and points(run, clean) <= goal_points


def cell(run: Run | None, rounds: int) -> str:
    if run is None:
        return "-"
    text = f"{100 * run.final:.2f}%" if run.errors else "-"
    if run.failure:
        text += f" (failed after round {len(run.errors)})" if run.errors else " (failed)"
    elif len(run.errors) < rounds:
        text += f" ({len(run.errors)} rounds)"
    return text


def share(*runs: Run) -> str:
    """Poisoned tasks per round over the runs' rounds, as a range (`4/16` or `3-5/16`)."""
    counts = [c for run in runs for c in run.poisoned_tasks]
    if not counts:
        return "-"
    lo, hi = min(counts), max(counts)
    total = max(t for run in runs for t in run.tasks)
    return f"{lo}/{total}" if lo == hi else f"{lo}-{hi}/{total}"


def poisoned_shards(results: dict[tuple[str, str], Run], mode: str) -> str:
    """The shards a poisoned node trained in any run of `mode`, in natural order."""
    names = {name for (m, _), run in results.items() if m == mode
             for name in run.poisoned_shards}
    number = re.compile(r"(\d+)")
    return " ".join(sorted(names, key=lambda n: [int(t) if t.isdigit() else t
                                                 for t in number.split(n)])) or "-"


def verdicts(results: dict[tuple[str, str], Run], args: SimpleNamespace,
             clean: float) -> tuple[list[str], dict[str, object]]:
    """One line per mode, and the headline figures."""
    lines = []
    summary: dict[str, object] = {"clean_fedavg_error": round(clean, 6)}
    missed: set[str] = set()  # strategies beyond the goal in some mode
    missed_own: set[str] = set()  # ... beyond it against their own clean run
    fedavg_broken = []
    for mode in args.modes:
        parts = []
        fedavg = results.get((mode, "fedavg"))
        if fedavg is not None:
            ok = within(fedavg, clean, args.goal_points)
            if not ok:
                fedavg_broken.append(mode)
            parts.append(f"fedavg {_signed(fedavg, clean)} "
                         f"({'within' if ok else 'NOT within'} {args.goal_points:g})")
            summary[f"{mode}_fedavg_points"] = _rounded_points(fedavg, clean)
        for strategy in args.strategies:
            if strategy == "fedavg" or (mode, strategy) not in results:
                continue
            run = results[(mode, strategy)]
            ok = within(run, clean, args.goal_points)
            if not ok:
                missed.add(strategy)
            own = results.get((CLEAN, strategy))
            versus_own = ""
            if own is not None and own.errors and not own.failure:
                if not within(run, own.final, args.goal_points):
                    missed_own.add(strategy)
                versus_own = (f"; {_signed(run, own.final)} against its own clean "
                              f"{100 * own.final:.2f}%")
            else:
                missed_own.add(strategy)
            parts.append(f"{strategy} {_signed(run, clean)} ({'met' if ok else 'MISSED'}"
                         f"{versus_own})")
            summary[f"{mode}_{strategy.replace('-', '_')}_points"] = _rounded_points(run, clean)
        lines.append(f"{mode}: " + "; ".join(parts))
    tested = [s for s in GOAL_STRATEGIES if s in args.strategies]
    robust = [s for s in args.strategies if s != "fedavg"]
    summary["goal_strategies"] = ",".join(tested) or "none"
    summary["goal_met"] = ("no" if missed & set(tested) else "yes") if tested else "not-tested"
    summary["fedavg_broken_modes"] = ",".join(fedavg_broken) or "none"
    # Which strategies met the goal in every mode: against clean FedAvg (the goal as
    # written), and against their own clean run (robustness alone, whatever they cost).
    summary["within_goal_everywhere"] = ",".join(s for s in robust if s not in missed) or "none"
    summary["within_own_clean_everywhere"] = (
        ",".join(s for s in robust if s not in missed_own) or "none")
    return lines, summary


def _signed(run: Run, clean: float) -> str:
    if run.failure and not run.errors:
        return "failed"
    text = f"{points(run, clean):+.2f} points"
    return text + (" (failed)" if run.failure else "")


def _rounded_points(run: Run, clean: float) -> float | str:
    return round(points(run, clean), 2) if run.errors and not run.failure else "failed"


def markdown_table(results: dict[tuple[str, str], Run], args: SimpleNamespace) -> list[str]:
    """Strategies as rows, modes as columns: final validation error after the last round."""
    modes = [CLEAN, *args.modes]
    head = ["strategy", *("clean (no node poisoned)" if m == CLEAN else m for m in modes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy in args.strategies:
        cells = [cell(results.get((m, strategy)), args.rounds) for m in modes]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def write_csvs(results: dict[tuple[str, str], Run], out: Path, clean: float,
               args: SimpleNamespace) -> None:
    with open(out / "runs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["mode", "strategy", "nodes", "poisoned_nodes", "rounds_done",
                         "final_error", "clean_fedavg_error", "points_above_clean",
                         "within_goal", "own_clean_error", "points_above_own_clean",
                         "poisoned_tasks_per_round", "seconds", "failure"])
        for (mode, strategy), run in results.items():
            own = results.get((CLEAN, strategy))
            own_error = own.final if own is not None else math.nan
            writer.writerow([
                mode, strategy, args.nodes, 0 if mode == CLEAN else args.poisoned,
                len(run.errors), f"{run.final:.6f}", f"{clean:.6f}",
                f"{points(run, clean):.4f}", "yes" if within(run, clean, args.goal_points)
                else "no", f"{own_error:.6f}", f"{points(run, own_error):.4f}", share(run),
                f"{run.seconds:.2f}", run.failure,
            ])
    with open(out / "rounds.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["mode", "strategy", "round", "validation_error", "poisoned_tasks",
                         "tasks"])
        for (mode, strategy), run in results.items():
            for r, error in enumerate(run.errors, start=1):
                writer.writerow([mode, strategy, r, f"{error:.6f}", run.poisoned_tasks[r - 1],
                                 run.tasks[r - 1]])


def plot(results: dict[tuple[str, str], Run], path: Path, clean: float,
         args: SimpleNamespace) -> None:
    """Final error per mode and strategy (bars), then each mode's error curves per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    modes = [CLEAN, *args.modes]
    panels = 1 + len(args.modes)
    cols = 2 if panels > 1 else 1
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), dpi=110,
                             squeeze=False)
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(args.strategies)}
    ceiling = 100.0

    def percent_axis(ax) -> None:
        """Log scale from 1% to 100% with plain numbers: 8% and 99% in one panel, readable."""
        ax.set_yscale("log")
        ax.set_ylim(1.0, ceiling * 1.1)
        ax.set_yticks([1, 2, 5, 10, 20, 50, 100], ["1", "2", "5", "10", "20", "50", "100"])
        ax.yaxis.set_minor_formatter(NullFormatter())

    ax = axes[0][0]
    x = np.arange(len(modes))
    width = 0.8 / len(args.strategies)
    for k, strategy in enumerate(args.strategies):
        heights = [100 * results[(m, strategy)].final if (m, strategy) in results
                   and results[(m, strategy)].errors else np.nan for m in modes]
        pos = x + (k - (len(args.strategies) - 1) / 2) * width
        ax.bar(pos, heights, width, label=strategy, color=colors[strategy])
        for p, m, h in zip(pos, modes, heights, strict=True):
            run = results.get((m, strategy))
            if run is not None and run.failure:
                ax.text(p, min(h, ceiling) if math.isfinite(h) else 1, "failed", rotation=90,
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(100 * clean, color="black", linestyle="--", linewidth=1,
               label=f"clean FedAvg {100 * clean:.2f}%")
    ax.axhline(100 * clean + args.goal_points, color="black", linestyle=":", linewidth=1,
               label=f"goal: +{args.goal_points:g} point")
    percent_axis(ax)
    ax.set_xticks(x, ["clean" if m == CLEAN else m for m in modes])
    ax.set_xlabel(f"poisoning ({args.poisoned} of {args.nodes} nodes)")
    ax.set_ylabel(f"validation error after round {args.rounds} (%, log)")
    ax.set_title("Final error by strategy", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3, which="both")

    for index, mode in enumerate(args.modes, start=1):
        ax = axes[index // cols][index % cols]
        for strategy in args.strategies:
            run = results.get((mode, strategy))
            if run is None or not run.errors:
                continue
            ax.plot(range(1, len(run.errors) + 1), [100 * e for e in run.errors], marker="o",
                    markersize=3, label=strategy, color=colors[strategy])
        baseline = results.get((CLEAN, "fedavg"))
        if baseline is not None and baseline.errors:
            ax.plot(range(1, len(baseline.errors) + 1), [100 * e for e in baseline.errors],
                    color="black", linestyle="--", linewidth=1, label="clean FedAvg")
        percent_axis(ax)
        ax.set_xlabel("round")
        ax.set_ylabel("validation error (%, log)")
        ax.set_title(f"--poison {mode}: 1 of {args.nodes} nodes" if args.poisoned == 1 else
                     f"--poison {mode}: {args.poisoned} of {args.nodes} nodes", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    for index in range(panels, rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle(f"Robust aggregation against poisoned nodes: {args.rounds} rounds, "
                 f"h = {args.hidden}, {args.data_name}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ command line


def check_client_supports(strategies: list[str]) -> None:
    """The client must list --strategy (and its options) before any run asks for them."""
    wanted = set()
    if any(s != "fedavg" for s in strategies):
        wanted.add("--strategy")
    if "trimmed-mean" in strategies:
        wanted.add("--trim-fraction")
    if "krum" in strategies or "multi-krum" in strategies:
        wanted.add("--krum-f")
    if "multi-krum" in strategies:
        wanted.add("--krum-m")
    if not wanted:
        return
    done = subprocess.run([sys.executable, "-m", "client", "train", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    missing = sorted(o for o in wanted if o not in done.stdout)
    if missing:
        raise click.ClickException(
            f"this client has no {', '.join(missing)} option: run with --strategies fedavg "
            "until the client's aggregation strategies are installed"
        )


def count_shards(data: Path) -> int:
    return len(list(data.glob("train_*.txt")))


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.splitlines()[0])
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for runs.csv, rounds.csv, report.md, the plot and every run's "
                   "logs [a new temporary directory].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to save the plot [experiment_robust.png in --out].")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Data directory (train_*.txt, validate_*.txt) [the built-in "
                                 "letters data].")
@click.option("--modes", type=ListType(click.Choice(MODES), name="MODE,..."),
              default=",".join(MODES), show_default=True,
              help="Poisoning modes to run (compute_node --poison), comma-separated.")
@click.option("--strategies", type=ListType(click.Choice(STRATEGIES), name="STRATEGY,..."),
              default=",".join(STRATEGIES), show_default=True,
              help="Client --strategy values to run, comma-separated (fedavg works with a "
                   "client that has no --strategy).")
@click.option("--nodes", type=click.IntRange(min=2), default=4, show_default=True,
              help="Compute nodes per cluster.")
@click.option("--poisoned", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many of the nodes (the last ones) are poisoned.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Training rounds per run.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Epochs per round on each shard.")
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True,
              help="Hidden units H.")
@click.option("--eta", type=FiniteRange(min=0, min_open=True), default=0.4 / 64,
              show_default=True,
              help="Learning rate (step = eta * gradient summed over the batch).")
@click.option("--batch-size", type=click.IntRange(min=0), default=64, show_default=True,
              help="Mini-batch size inside a node's epochs (0 = full batch).")
@click.option("--momentum", type=FiniteRange(0, 1, max_open=True), default=0.9,
              show_default=True, help="Momentum of the nodes' mini-batch SGD.")
@click.option("--init", type=click.Choice(INIT_SCHEMES), default="he", show_default=True,
              help="Initial weights scheme (client --init).")
@click.option("--standardize/--no-standardize", default=True, show_default=True,
              help="Standardise the inputs (client --standardize).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the initial weights (client --seed).")
@click.option("--trim-fraction", type=FiniteRange(0, 0.5, max_open=True), default=None,
              help="trimmed-mean: fraction cut from each end [the poisoned nodes' share, "
                   "poisoned / nodes].")
@click.option("--krum-f", type=click.IntRange(min=0), default=None,
              help="krum, multi-krum: updates assumed poisoned per round [the poisoned "
                   "nodes' expected tasks, shards x poisoned / nodes, rounded up].")
@click.option("--krum-m", type=click.IntRange(min=1), default=None,
              help="multi-krum: updates averaged [shards - krum-f].")
@click.option("--goal-points", type=FiniteRange(min=0), default=1.0, show_default=True,
              help="The goal: a robust strategy ends within this many percentage points of "
                   "the clean FedAvg run's error.")
@click.option("--client-timeout-s", type=FiniteRange(min=1, max=86400),
              default=CLIENT_TIMEOUT_S, show_default=True,
              help="Seconds one client run may take before it is stopped.")
def cli(**options: object) -> int:
    import letters

    args = SimpleNamespace(**options)
    if args.poisoned >= args.nodes:
        raise click.BadParameter(f"{args.poisoned} poisoned of {args.nodes} nodes leaves no "
                                 "clean node", param_hint="--poisoned")
    args.data_name = "letters (built-in)" if args.data is None else str(args.data)
    args.data = (args.data or letters.default_data_dir()).resolve()
    shards = count_shards(args.data)
    if shards == 0:
        raise click.BadParameter(f"no train_*.txt in {args.data}", param_hint="--data")
    require_module("matplotlib")  # before the runs, not after them
    check_client_supports(args.strategies)
    if args.trim_fraction is None:
        args.trim_fraction = args.poisoned / args.nodes
    if args.krum_f is None:
        args.krum_f = math.ceil(shards * args.poisoned / args.nodes)
    if args.krum_m is None:
        args.krum_m = max(1, shards - args.krum_f)
    out = args.out or Path(tempfile.mkdtemp(prefix="robust-"))
    out.mkdir(parents=True, exist_ok=True)
    plot_path = args.plot_path or out / "experiment_robust.png"

    started = time.perf_counter()
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; date {datetime.date.today().isoformat()}", flush=True)
    print(f"data: {args.data_name}, {shards} shards; {args.nodes} nodes, {args.poisoned} "
          f"poisoned (the last), policy round-robin; client {args.rounds} {args.epochs} "
          f"{args.hidden} {args.eta!r} {' '.join(client_options(args, 'fedavg'))}", flush=True)
    print(f"strategy options: trim fraction {args.trim_fraction:g}, krum f {args.krum_f}, "
          f"multi-krum m {args.krum_m}", flush=True)
    print(f"{'mode':<10} {'strategy':<13} {'error':>8} {'poisoned':>9} {'seconds':>8}",
          flush=True)
    results: dict[tuple[str, str], Run] = {}
    for mode in [CLEAN, *args.modes]:
        for strategy in args.strategies:
            run = run_job(out / "runs" / f"{mode}-{strategy}", mode, strategy, args)
            results[(mode, strategy)] = run
            print(f"{mode:<10} {strategy:<13} {cell(run, args.rounds):>8} {share(run):>9} "
                  f"{run.seconds:8.2f}" + (f"  {run.failure}" if run.failure else ""),
                  flush=True)
    baseline = results.get((CLEAN, "fedavg"))
    if baseline is None or baseline.failure or not baseline.errors:
        why = baseline.failure if baseline is not None else "not run (add fedavg)"
        raise click.ClickException(f"the clean FedAvg run, the goal's yardstick, failed: {why}")
    clean = baseline.final

    write_csvs(results, out, clean, args)
    plot(results, plot_path, clean, args)
    table = markdown_table(results, args)
    lines, summary = verdicts(results, args, clean)
    report = [
        f"Machine: {machine}. Date: {datetime.date.today().isoformat()}. "
        f"Total {time.perf_counter() - started:.0f} s.",
        "",
        f"Final validation error after {args.rounds} rounds, {args.poisoned} of {args.nodes} "
        f"nodes poisoned ({args.data_name}); clean FedAvg {100 * clean:.2f}%:",
        "",
        *table,
        "",
        "Tasks per round whose result came from a poisoned node (all runs, all rounds): "
        + ", ".join(f"{m} {share(*(r for (rm, _), r in results.items() if rm == m))}"
                    for m in args.modes) + "; the shards they trained over all rounds: "
        + ", ".join(f"{m} {poisoned_shards(results, m)}" for m in args.modes) + ".",
        "",
        f"Verdict (goal: {', '.join(GOAL_STRATEGIES)} within {args.goal_points:g} point of "
        "clean FedAvg where FedAvg is not; points above clean FedAvg, then above the "
        "strategy's own clean run):",
        "",
        *(f"- {line}" for line in lines),
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report), flush=True)
    print(f"files: {out}/runs.csv {out}/rounds.csv {out}/report.md {plot_path}", flush=True)
    summary["plot"] = str(plot_path)
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "experiment_robust.py", argv)


if __name__ == "__main__":
    main()
