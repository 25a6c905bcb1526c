"""Time to accuracy: seconds from launch until the cluster's model reaches a validation error.

Starts a real local cluster (scripts/local_cluster.py: a coordinator and --nodes compute
nodes on loopback), runs the real client as a subprocess, and reads its stdout line by line,
stamping each `round R/N  validation error E%` line with the seconds since launch. Launch is
the moment before the first node is started, so the figure includes starting the cluster,
starting the client, reading and standardising the data, uploading the shards and every
round's validation. The exact error per round comes from the client's timing.txt (6
decimals; stdout shows 2).

Prints the time to the target, the error reached, the curve as a table, saves it as a PNG
plot, and ends with one key=value line. Exits non-zero when the target is not reached, or
not within --goal-s seconds.

Usage (the real UCI letters, converted once):
    .venv/bin/python -m letters split ../shared/data/letter-recognition.data /tmp/uci \\
        --shards 16 --validate 4000
    .venv/bin/python scripts/bench_time_to_accuracy.py --data /tmp/uci --target 0.05
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from local_cluster import POLICY_CHOICE, REPO, SHARED_DATA, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from client.federated_cli import (  # noqa: E402
    add_federated_options,
    federated_argv,
    run_config_fields,
)
from client.timing import read_timing  # noqa: E402
from mlcore.model import INIT_SCHEMES  # noqa: E402
from runtime.cli import FiniteRange, require_module, run_cli  # noqa: E402

ROUND_LINE = re.compile(r"^round (\d+)/(\d+)\s+validation error ([\d.]+)%")

# The best configuration found for the real UCI letters (16 shards of 1,000 rows, 2 nodes):
# see the README's Performance section for the sweep behind it.
BEST = {
    "rounds": 30,
    "epochs": 5,
    "hidden": 256,
    "eta": 0.4 / 64,  # summed-gradient rule: the effective per-row rate 0.4 over the batch
    "batch_size": 64,
    "momentum": 0.9,
    "init": "he",
    "standardize": True,
}


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The client's training settings as options defaulting to BEST (also compare_ensemble's)."""
    options = [
        click.option("--rounds", type=click.IntRange(min=1), default=BEST["rounds"],
                     show_default=True),
        click.option("--epochs", type=click.IntRange(min=1), default=BEST["epochs"],
                     show_default=True, help="Epochs per round."),
        click.option("--hidden", type=click.IntRange(min=1), default=BEST["hidden"],
                     show_default=True, help="Hidden units H."),
        click.option("--eta", type=FiniteRange(min=0, min_open=True), default=BEST["eta"],
                     show_default=True,
                     help="Learning rate (step = eta * gradient summed over the batch)."),
        click.option("--batch-size", type=click.IntRange(min=0), default=BEST["batch_size"],
                     show_default=True),
        click.option("--momentum", type=FiniteRange(0, 1, max_open=True),
                     default=BEST["momentum"], show_default=True),
        click.option("--init", type=click.Choice(INIT_SCHEMES), default=BEST["init"],
                     show_default=True),
        click.option("--standardize/--no-standardize", default=BEST["standardize"],
                     show_default=True),
        click.option("--seed", type=int, default=1, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass
class Point:
    seconds: float  # since launch, when the client printed the round
    round: int
    error: float  # fraction, from timing.txt when available


def _required_data() -> click.UsageError:
    hint = ""
    if SHARED_DATA.exists():
        hint = (f"; the real UCI letters are at {SHARED_DATA}: convert them with "
                f".venv/bin/python -m letters split {SHARED_DATA} /tmp/uci --shards 16 "
                "--validate 4000, then give --data /tmp/uci")
    return click.UsageError("--data DIR is required (a data dir with train_*.txt and "
                            "validate_*.txt)" + hint)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Data dir with train_*.txt shards and one validate_*.txt "
                                 "(required).")
@click.option("--target", type=FiniteRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Validation error to reach.")
@click.option("--goal-s", type=FiniteRange(min=0, min_open=True, max=86400), default=15.0,
              show_default=True, help="Seconds from launch the target must be reached within.")
@click.option("--nodes", type=click.IntRange(min=1), default=2, show_default=True,
              help="Compute nodes.")
@click.option("--policy", type=POLICY_CHOICE, default="round-robin", show_default=True,
              help="Scheduling policy.")
@training_options
@add_federated_options
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to save the error-against-seconds plot [time_to_accuracy.png in "
                   "--workdir, else in a new temporary directory].")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep logs and timing.txt here [a temporary directory].")
@click.option("--timeout-s", type=FiniteRange(min=0, min_open=True, max=86400), default=600.0,
              show_default=True, help="Give up after this many seconds.")
def cli(**options: object) -> int:
    args = SimpleNamespace(**options)
    if args.data is None:
        raise _required_data()
    run_config_fields(vars(args))  # an option the strategy does not use: one line, now
    require_module("matplotlib")  # before the runs, not after them
    if args.plot is None:
        plot_dir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tta-plot-"))
        args.plot = plot_dir / "time_to_accuracy.png"
    return run_and_report(args)


def client_args(args: SimpleNamespace) -> list[str]:
    """The training arguments after the coordinator's address (also printed for the record)."""
    out = [str(args.data), str(args.rounds), str(args.epochs), str(args.hidden), repr(args.eta),
           "--batch-size", str(args.batch_size), "--momentum", repr(args.momentum),
           "--init", args.init, "--seed", str(args.seed)]
    if args.standardize:
        out.append("--standardize")
    # --strategy, --lr-schedule, --fraction, ... as the client takes them (when given).
    return out + federated_argv(vars(args))


def run(args: SimpleNamespace, workdir: Path) -> tuple[list[Point], dict[str, float], int]:
    """Launch the cluster and the client; the curve, phase times, and the client's exit code."""
    timing = workdir / "timing.txt"
    points: list[Point] = []
    launch = time.perf_counter()
    with LocalCluster(workdir) as cluster:
        for _ in range(args.nodes):
            cluster.add_node(0.0, "--load-delay-s", "0")
        coordinator = cluster.add_coordinator(args.policy)
        ready_s = time.perf_counter() - launch
        argv = [sys.executable, "-m", "client", coordinator.address.host,
                str(coordinator.address.port), *client_args(args), "--timing", str(timing)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(workdir / "client.log", "wb") as stderr:
            client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                      bufsize=1, cwd=REPO, env=env)
            deadline = launch + args.timeout_s
            assert client.stdout is not None
            for line in client.stdout:
                now = time.perf_counter() - launch
                match = ROUND_LINE.match(line)
                if match:
                    points.append(Point(now, int(match.group(1)), float(match.group(3)) / 100))
                    print(f"  {now:7.2f} s  {line.rstrip()}", flush=True)
                if time.perf_counter() > deadline:
                    client.kill()
                    break
            code = client.wait()
    _exact_errors(points, timing)
    return points, {"cluster_ready_s": ready_s}, code


def _exact_errors(points: list[Point], timing: Path) -> None:
    """Replace stdout's rounded percentages by timing.txt's 6-decimal fractions."""
    if not timing.exists():
        return
    exact = {int(r["round"]): float(r["validation_error"])
             for r in read_timing(timing)[1] if r["kind"] == "round"}
    for p in points:
        p.error = exact.get(p.round, p.error)


def plot(points: list[Point], target: float, hit: Point | None, ready_s: float, path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot([p.seconds for p in points], [p.error * 100 for p in points], "o-", ms=3,
            label="validation error after each round")
    ax.axhline(target * 100, color="tab:red", ls="--", lw=1, label=f"target {target:.1%}")
    ax.axvline(ready_s, color="grey", ls=":", lw=1, label=f"cluster ready ({ready_s:.1f} s)")
    if hit is not None:
        ax.plot([hit.seconds], [hit.error * 100], "r*", ms=12,
                label=f"target reached: {hit.seconds:.1f} s, round {hit.round}")
    ax.set_xlim(left=0)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks([t for t in (2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
                   if min(p.error for p in points) * 80 <= t <= max(p.error for p in points) * 120])
    ax.set_xlabel("seconds since launch (cluster start included)")
    ax.set_ylabel("validation error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _federated_title(args: SimpleNamespace) -> list[str]:
    """The federated options given, as 'strategy fedadam', 'server-lr 0.01', ... for the plot."""
    argv = federated_argv(vars(args))
    return [f"{flag.lstrip('-')} {value}" for flag, value in zip(argv[::2], argv[1::2],
                                                                  strict=True)]


def run_and_report(args: SimpleNamespace) -> int:
    """Run the cluster and the client, print the curve and the verdict; 0 when the goal is met."""
    config = " ".join(client_args(args)[1:])
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; data {args.data}; {args.nodes} nodes, "
          f"policy {args.policy}; target {args.target:.2%} within {args.goal_s:g} s")
    print(f"client: python -m client HOST PORT {args.data} {config}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        points, phases, code = run(args, workdir)
        client_log = (workdir / "client.log").read_text(errors="replace")
    hit = next((p for p in points if p.error <= args.target), None)
    best = min(points, key=lambda p: p.error) if points else None

    print(f"\n{'seconds':>8} {'round':>5} {'validation error':>16}")
    for p in points:
        mark = "  <- target" if p is hit else ""
        print(f"{p.seconds:>8.2f} {p.round:>5} {p.error:>16.4%}{mark}")
    print(f"\ncluster ready after {phases['cluster_ready_s']:.2f} s; "
          f"{len(points)} rounds in {points[-1].seconds:.2f} s" if points else "no rounds")
    if code != 0:
        print(f"the client exited with {code}:\n{client_log[-2000:]}", file=sys.stderr)
    title = (f"{args.nodes} nodes; rounds {args.rounds}, epochs {args.epochs}, H {args.hidden}, "
             f"eta {args.eta:g}, batch {args.batch_size},\nmomentum {args.momentum:g}, "
             f"init {args.init}, {'standardised' if args.standardize else 'raw'} inputs"
             + ("\n" + ", ".join(_federated_title(args)) if _federated_title(args) else ""))
    if points:
        plot(points, args.target, hit, phases["cluster_ready_s"], args.plot, title)
        print(f"plot: {args.plot.resolve()}")
    met = hit is not None and hit.seconds <= args.goal_s
    if hit is not None:
        print(f"target {args.target:.2%} reached after {hit.seconds:.2f} s (round {hit.round}, "
              f"error {hit.error:.4%}); goal <= {args.goal_s:g} s "
              + ("met" if met else f"MISSED by {hit.seconds - args.goal_s:.2f} s"))
    else:
        reached = f"best {best.error:.4%} in round {best.round}" if best else "no round finished"
        print(f"target {args.target:.2%} NOT reached ({reached})")
    error = hit.error if hit else (best.error if best else math.nan)
    tts = f"{hit.seconds:.2f}" if hit else "nan"
    print(f"time_to_target_s={tts} error={error:.5f} target={args.target:g} "
          f"reached={'yes' if hit else 'no'} goal_s={args.goal_s:g} "
          f"goal_met={'yes' if met else 'no'} nodes={args.nodes} "
          f"cluster_ready_s={phases['cluster_ready_s']:.2f}")
    return 0 if met and code == 0 else 1


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_time_to_accuracy.py", argv)


if __name__ == "__main__":
    main()
