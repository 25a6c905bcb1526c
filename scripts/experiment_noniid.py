"""FedAvg, FedProx and FedAdam on label-skewed (non-IID) shards. Measured, not argued.

For every --alphas value (a Dirichlet concentration, or `iid`) it cuts the same source
data into --shards training shards with `python -m letters split --dirichlet ALPHA`
(each class's training rows dealt to the shards in Dirichlet(ALPHA) proportions, seeded
by --split-seed; `iid` is the plain split), the same validation rows every time. Then it
runs the real client (`python -m client`) on a local cluster of --nodes real compute
nodes once per --strategies value:

- fedavg:  the client's default aggregation;
- fedprox: FedAvg with the nodes' proximal term, `--prox-mu MU`;
- fedadam: `--strategy fedadam --server-lr LR` (the client's other FedAdam options at
           their defaults unless --beta1/--beta2/--tau are given).

Every strategy starts from the same weights (each --seeds value is one set of runs from
its initial weights) and trains the same job, and the cluster is deterministic, so the
same settings give the same table on any run. One run's final error moves by a few tenths
of a point with the initial weights alone, so differences smaller than the spread over
--seeds mean nothing. The validation error after every round comes from the client's
timing.txt. It writes runs.csv (final and best error per run, the shards' label entropy
and sizes), rounds.csv (the curves), report.md (command, machine, date, Markdown table:
the mean final error over the seeds and its range) and a plot (one panel per alpha, the
mean validation error against round per strategy, shaded between the seeds' lowest and
highest), and ends with one key=value line of headline figures.

The source is the built-in letters data (the generator's output, its 20,000 rows in
order) unless --data names a data file: the real UCI letter-recognition.data, for
example, which stays outside the repository (the split shards go under --out).

Usage: .venv/bin/python scripts/experiment_noniid.py --out DIR [--data FILE]
       [--alphas 0.1,0.5,iid] [--strategies fedavg,fedprox,fedadam] [--rounds 30]
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from bench_time_to_accuracy import BEST  # noqa: E402
from client_runs import run_client  # noqa: E402
from local_cluster import REPO, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from mlcore.model import INIT_SCHEMES  # noqa: E402
from runtime.cli import FiniteRange, ListType, require_module, run_cli  # noqa: E402

STRATEGIES = ["fedavg", "fedprox", "fedadam"]
LABELS = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam"}
IID = "iid"
TICKS = [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 60, 80, 100]  # % on the plot's log axis
CLIENT_TIMEOUT_S = 1800


class AlphaType(click.ParamType):
    """A Dirichlet concentration (a finite number > 0), or `iid` for the plain split."""

    name = "ALPHA|iid"

    def convert(self, value, param, ctx) -> str:
        text = str(value).strip().lower()
        if text == IID:
            return IID
        try:
            alpha = float(text)
        except ValueError:
            self.fail(f"expected a number > 0 or 'iid', got {value!r}", param, ctx)
        if not (math.isfinite(alpha) and alpha > 0):
            self.fail(f"alpha must be a finite number > 0, got {value!r}", param, ctx)
        return f"{alpha:g}"


@dataclass
class Shards:
    """One split of the source: where it is and how skewed its labels are."""

    alpha: str
    path: Path
    mean_entropy: float = math.nan  # bits, over the training shards
    min_rows: int = 0
    max_rows: int = 0
    classes_per_shard: float = math.nan  # effective classes, 2 ** entropy, mean over shards


@dataclass
class Run:
    alpha: str
    strategy: str
    seed: int
    errors: list[float] = field(default_factory=list)  # validation error after each round
    seconds: float = 0.0
    failure: str = ""

    @property
    def final(self) -> float:
        return self.errors[-1] if self.errors else math.nan

    @property
    def best(self) -> float:
        return min(self.errors) if self.errors else math.nan


# ------------------------------------------------------------------ data


def source_file(args: SimpleNamespace) -> Path:
    """The file to split: --data, or the built-in letters data's files in order as one."""
    if args.data is not None:
        return args.data
    import letters

    d = letters.default_data_dir()
    names = sorted((p.name for p in d.glob("train_*.txt")),
                   key=lambda n: int(n.removeprefix("train_letters").removesuffix(".txt")))
    whole = args.out / "letters-default.data"
    whole.write_bytes(b"".join((d / n).read_bytes() for n in [*names, "validate_letters.txt"]))
    return whole


def split_command(source: Path, out_dir: Path, alpha: str, args: SimpleNamespace) -> list[str]:
    argv = [sys.executable, "-m", "letters", "split", str(source), str(out_dir),
            "--shards", str(args.shards), "--validate", str(args.validate), "--overwrite"]
    if alpha != IID:
        argv += ["--dirichlet", alpha, "--seed", str(args.split_seed)]
    return argv


def make_shards(source: Path, alpha: str, args: SimpleNamespace) -> Shards:
    from letters.partition import label_entropy_bits
    from mlcore.data import read_data_dir

    path = args.out / "data" / f"alpha-{alpha}"
    done = subprocess.run(split_command(source, path, alpha, args), capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    if done.returncode != 0:
        raise click.ClickException(f"letters split failed for alpha {alpha}: "
                                   f"{done.stderr.strip()}")
    d = read_data_dir(path)
    counts = [np.bincount(ds.y, minlength=d.n_classes) for _, ds in d.train]
    return Shards(
        alpha, path,
        mean_entropy=float(np.mean([label_entropy_bits(c) for c in counts])),
        min_rows=min(ds.n_rows for _, ds in d.train),
        max_rows=max(ds.n_rows for _, ds in d.train),
        classes_per_shard=float(np.mean([2 ** label_entropy_bits(c) for c in counts])),
    )


# ------------------------------------------------------------------ runs


def client_options(args: SimpleNamespace, strategy: str, seed: int) -> list[str]:
    """The client's options for one strategy (fedavg needs none beyond training's)."""
    options = ["--seed", str(seed), "--batch-size", str(args.batch_size),
               "--momentum", repr(args.momentum), "--init", args.init]
    if args.standardize:
        options.append("--standardize")
    if strategy == "fedprox":
        options += ["--prox-mu", repr(args.prox_mu)]
    if strategy == "fedadam":
        options += ["--strategy", "fedadam", "--server-lr", repr(args.server_lr)]
        for name in ("beta1", "beta2", "tau"):
            value = getattr(args, name)
            if value is not None:
                options += [f"--{name}", repr(value)]
    return options


def run_job(cluster: LocalCluster, shards: Shards, strategy: str, seed: int,
            args: SimpleNamespace) -> Run:
    workdir = args.out / "runs" / f"alpha-{shards.alpha}-{strategy}-seed{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    timing = workdir / "timing.txt"
    timing.unlink(missing_ok=True)
    run = Run(shards.alpha, strategy, seed)
    address = cluster.coordinator.address
    argv = [sys.executable, "-m", "client", address.host, str(address.port), str(shards.path),
            str(args.rounds), str(args.epochs), str(args.hidden), repr(args.eta),
            "--timing", str(timing), *client_options(args, strategy, seed)]
    client = run_client(workdir, argv, timing, args.client_timeout_s)
    run.seconds, run.failure, run.errors = client.seconds, client.failure, client.errors
    return run


# ------------------------------------------------------------------ report


def strategy_label(strategy: str, args: SimpleNamespace) -> str:
    if strategy == "fedprox":
        return f"FedProx (mu = {args.prox_mu:g})"
    if strategy == "fedadam":
        return f"FedAdam (server lr {args.server_lr:g})"
    return LABELS[strategy]


def alpha_label(alpha: str) -> str:
    return "IID" if alpha == IID else f"alpha = {alpha}"


Results = dict[tuple[str, str, int], Run]  # (alpha, strategy, seed) -> run


def runs_of(results: Results, alpha: str, strategy: str) -> list[Run]:
    return [run for (a, s, _), run in results.items() if a == alpha and s == strategy]


def finals(runs: list[Run]) -> list[float]:
    """The final errors of the runs that finished every round."""
    return [run.final for run in runs if run.errors and not run.failure]


def cell(runs: list[Run], rounds: int) -> str:
    """Mean final error over the seeds, then its range (or the best round's, for one seed)."""
    if not runs:
        return "-"
    done = [run for run in runs if run.errors and not run.failure and len(run.errors) == rounds]
    if not done:
        return "failed"
    values = [100 * run.final for run in done]
    if len(done) == 1:
        text = f"{values[0]:.2f}% (best round {100 * done[0].best:.2f}%)"
    else:
        text = f"{np.mean(values):.2f}% ({min(values):.2f}-{max(values):.2f})"
    if len(done) < len(runs):
        text += f", {len(runs) - len(done)} of {len(runs)} runs failed"
    return text


def markdown_table(shards: dict[str, Shards], results: Results,
                   args: SimpleNamespace) -> list[str]:
    """Data settings as rows; the shards' skew, then each strategy's final error."""
    head = ["data", "label entropy per shard", "effective classes per shard",
            "rows per shard", *(strategy_label(s, args) for s in args.strategies)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, sh in shards.items():
        cells = [alpha_label(alpha), f"{sh.mean_entropy:.2f} bits",
                 f"{sh.classes_per_shard:.1f}", f"{sh.min_rows:,}-{sh.max_rows:,}"]
        cells += [cell(runs_of(results, alpha, s), args.rounds) for s in args.strategies]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_csvs(shards: dict[str, Shards], results: Results, args: SimpleNamespace) -> None:
    with open(args.out / "runs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["alpha", "strategy", "seed", "rounds_done", "final_error",
                         "best_error", "mean_shard_entropy_bits", "effective_classes",
                         "min_shard_rows", "max_shard_rows", "seconds", "failure"])
        for (alpha, strategy, seed), run in results.items():
            sh = shards[alpha]
            writer.writerow([alpha, strategy, seed, len(run.errors), f"{run.final:.6f}",
                             f"{run.best:.6f}", f"{sh.mean_entropy:.4f}",
                             f"{sh.classes_per_shard:.2f}", sh.min_rows, sh.max_rows,
                             f"{run.seconds:.2f}", run.failure])
    with open(args.out / "rounds.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["alpha", "strategy", "seed", "round", "validation_error"])
        for (alpha, strategy, seed), run in results.items():
            for r, error in enumerate(run.errors, start=1):
                writer.writerow([alpha, strategy, seed, r, f"{error:.6f}"])


def plot(shards: dict[str, Shards], results: Results, path: Path,
         args: SimpleNamespace) -> None:
    """One panel per data setting: mean validation error (%, log) against round per
    strategy, shaded between the seeds' lowest and highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    alphas = list(shards)
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.6 * len(alphas), 4.2), dpi=110,
                             sharey=True, squeeze=False)
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(STRATEGIES)}
    for ax, alpha in zip(axes[0], alphas, strict=True):
        for strategy in args.strategies:
            curves = [run.errors for run in runs_of(results, alpha, strategy) if run.errors]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            table = 100 * np.array([c[:n] for c in curves])
            x = np.arange(1, n + 1)
            label = f"{strategy_label(strategy, args)}: {table[:, -1].mean():.2f}%"
            ax.plot(x, table.mean(axis=0), label=label, color=colors[strategy], linewidth=1.5)
            if len(curves) > 1:
                ax.fill_between(x, table.min(axis=0), table.max(axis=0), color=colors[strategy],
                                alpha=0.18, linewidth=0)
        sh = shards[alpha]
        ax.set_title(f"{alpha_label(alpha)}  (label entropy {sh.mean_entropy:.2f} bits)",
                     fontsize=10)
        ax.set_xlabel("round")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(FixedLocator(TICKS))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title=f"final error (mean of {len(args.seeds)})"
                  if len(args.seeds) > 1 else "final error", title_fontsize=8)
    axes[0][0].set_ylabel("validation error (%, log)")
    fig.suptitle(f"{args.shards} shards, Dirichlet label skew: {args.data_name}, "
                 f"{args.nodes} nodes, h = {args.hidden}, {args.epochs} epochs a round, "
                 f"eta {args.eta:g}, batch {args.batch_size}, momentum {args.momentum:g}",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(shards: dict[str, Shards], results: Results, args: SimpleNamespace,
                 command: str, seconds: float) -> list[str]:
    seeds = ",".join(map(str, args.seeds))
    what = (f"mean over the initial-weight seeds {seeds}, in brackets their range"
            if len(args.seeds) > 1 else f"seed {seeds}, in brackets the best round's")
    lines = [
        "# Non-IID comparison", "",
        f"Command: `{command}`", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; {datetime.date.today().isoformat()}; "
        f"{seconds:.0f} s in all.", "",
        f"Data: {args.data_name}, {args.shards} training shards, {args.validate} validation "
        f"rows (the same IID rows for every alpha), split seed {args.split_seed}.", "",
        f"Training: {args.nodes} nodes, {args.rounds} rounds of {args.epochs} epochs, "
        f"h = {args.hidden}, eta {args.eta:g}, batch {args.batch_size}, momentum "
        f"{args.momentum:g}, init {args.init}, "
        f"{'standardised inputs' if args.standardize else 'raw inputs'}.", "",
        f"Validation error after round {args.rounds} ({what}):", "",
        *markdown_table(shards, results, args), "",
    ]
    (args.out / "report.md").write_text("\n".join(lines))
    return lines


# ------------------------------------------------------------------ command line


def check_client_supports(strategies: list[str], args: SimpleNamespace) -> None:
    """The client must list the options the chosen strategies need before any run."""
    wanted = set()
    if "fedprox" in strategies:
        wanted.add("--prox-mu")
    if "fedadam" in strategies:
        wanted |= {"--strategy", "--server-lr"}
        wanted |= {f"--{n}" for n in ("beta1", "beta2", "tau") if getattr(args, n) is not None}
    if not wanted:
        return
    done = subprocess.run([sys.executable, "-m", "client", "train", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    missing = sorted(o for o in wanted if o not in done.stdout.split())
    if missing:
        raise click.ClickException(
            f"this client has no {', '.join(missing)} option: run with --strategies fedavg "
            "until the client's FedProx and FedAdam options are installed"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.splitlines()[0])
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the split data, every run's logs, runs.csv, rounds.csv, "
                   "report.md and the plot.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to save the plot [experiment_noniid.png in --out].")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="A data file to split (UCI letter-first or numeric), e.g. "
                   "../shared/data/letter-recognition.data [the built-in letters data].")
@click.option("--alphas", type=ListType(AlphaType(), name="ALPHA|iid,..."),
              default="0.1,0.5,iid", show_default=True,
              help="Dirichlet concentrations of the label skew, comma-separated; iid is the "
                   "plain split.")
@click.option("--strategies", type=ListType(click.Choice(STRATEGIES), name="STRATEGY,..."),
              default=",".join(STRATEGIES), show_default=True,
              help="What to compare, comma-separated (fedavg works with any client).")
@click.option("--shards", type=click.IntRange(min=1), default=16, show_default=True,
              help="Training shards (letters split --shards).")
@click.option("--validate", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Validation rows: the source's last rows (letters split --validate).")
@click.option("--split-seed", type=int, default=1, show_default=True,
              help="Seed of the Dirichlet draws (letters split --seed).")
@click.option("--nodes", type=click.IntRange(min=1), default=2, show_default=True,
              help="Compute nodes in the local cluster.")
@click.option("--rounds", type=click.IntRange(min=1), default=BEST["rounds"],
              show_default=True, help="Training rounds per run.")
@click.option("--epochs", type=click.IntRange(min=1), default=BEST["epochs"],
              show_default=True, help="Epochs per round on each shard.")
@click.option("--hidden", type=click.IntRange(min=1), default=BEST["hidden"],
              show_default=True, help="Hidden units H.")
@click.option("--eta", type=FiniteRange(min=0, min_open=True), default=BEST["eta"],
              show_default=True,
              help="Learning rate (step = eta * gradient summed over the batch).")
@click.option("--batch-size", type=click.IntRange(min=0), default=BEST["batch_size"],
              show_default=True, help="Mini-batch size inside a node's epochs (0 = full batch).")
@click.option("--momentum", type=FiniteRange(0, 1, max_open=True), default=BEST["momentum"],
              show_default=True, help="Momentum of the nodes' mini-batch SGD.")
@click.option("--init", type=click.Choice(INIT_SCHEMES), default=BEST["init"],
              show_default=True, help="Initial weights.")
@click.option("--standardize/--no-standardize", default=BEST["standardize"],
              show_default=True, help="Standardise inputs with the training shards' mean/std.")
@click.option("--seeds", type=ListType(click.IntRange(min=0), name="SEED,..."), default="1",
              show_default=True,
              help="Seeds of the initial weights, comma-separated: every strategy and alpha "
                   "runs once per seed; the table shows the mean and range.")
@click.option("--prox-mu", type=FiniteRange(min=0, min_open=True), default=0.01,
              show_default=True, help="FedProx's proximal coefficient mu (client --prox-mu).")
@click.option("--server-lr", type=FiniteRange(min=0, min_open=True), default=0.01,
              show_default=True, help="FedAdam's server learning rate (client --server-lr).")
@click.option("--beta1", type=FiniteRange(0, 1, max_open=True), default=None,
              help="FedAdam's beta1 (client --beta1) [the client's default].")
@click.option("--beta2", type=FiniteRange(0, 1, max_open=True), default=None,
              help="FedAdam's beta2 (client --beta2) [the client's default].")
@click.option("--tau", type=FiniteRange(min=0, min_open=True), default=None,
              help="FedAdam's adaptivity tau (client --tau) [the client's default].")
@click.option("--client-timeout-s", type=FiniteRange(min=0, min_open=True),
              default=CLIENT_TIMEOUT_S, show_default=True,
              help="Seconds one client run may take before the script gives up.")
def cli(**options: object) -> int:
    args = SimpleNamespace(**options)
    require_module("matplotlib")  # before the runs, not after them
    check_client_supports(args.strategies, args)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.plot_path = args.plot_path or args.out / "experiment_noniid.png"
    args.data_name = (f"{args.data.name}" if args.data is not None
                      else "built-in letters data (generated)")
    command = shlex.join(["scripts/experiment_noniid.py", *sys.argv[1:]])
    started = time.perf_counter()

    source = source_file(args)
    shards = {alpha: make_shards(source, alpha, args) for alpha in args.alphas}
    for alpha, sh in shards.items():
        split_argv = ["python", *split_command(source, sh.path, alpha, args)[1:]]
        print(f"data {alpha_label(alpha)}: {shlex.join(split_argv)}\n"
              f"    label entropy {sh.mean_entropy:.2f} bits per shard (2^entropy "
              f"{sh.classes_per_shard:.1f} classes), rows {sh.min_rows:,}-{sh.max_rows:,}",
              flush=True)

    results: Results = {}
    print(f"{'data':<14} {'strategy':<28} {'seed':>5} {'final':>8} {'best':>8} {'seconds':>8}",
          flush=True)
    with LocalCluster(args.out / "cluster") as cluster:
        try:
            for i in range(args.nodes):
                cluster.add_node(0.0, "--seed", str(i + 1), "--log-level", "WARNING")
            cluster.add_coordinator("round-robin", "--seed", "1", "--log-level", "WARNING")
        except (RuntimeError, TimeoutError) as exc:
            raise click.ClickException(
                f"could not start the cluster: {' '.join(str(exc).split())[:300]}") from None
        for seed in args.seeds:
            for alpha, sh in shards.items():
                for strategy in args.strategies:
                    run = run_job(cluster, sh, strategy, seed, args)
                    results[(alpha, strategy, seed)] = run
                    tail = f"  FAILED: {run.failure}" if run.failure else ""
                    print(f"{alpha_label(alpha):<14} {strategy_label(strategy, args):<28} "
                          f"{seed:>5} {100 * run.final:7.2f}% {100 * run.best:7.2f}% "
                          f"{run.seconds:8.1f}{tail}", flush=True)

    seconds = time.perf_counter() - started
    write_csvs(shards, results, args)
    plot(shards, results, args.plot_path, args)
    for line in write_report(shards, results, args, command, seconds):
        print(line)
    print(f"plot: {args.plot_path}  csv: {args.out / 'runs.csv'}, {args.out / 'rounds.csv'}",
          flush=True)

    summary: dict[str, object] = {"rounds": args.rounds, "shards": args.shards,
                                  "seeds": len(args.seeds)}
    for alpha in shards:
        for strategy in args.strategies:
            done = finals(runs_of(results, alpha, strategy))
            summary[f"{strategy}_{alpha}"] = round(float(np.mean(done)), 4) if done else "failed"
    summary["failed_runs"] = sum(bool(r.failure) for r in results.values())
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return 1 if summary["failed_runs"] else 0


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "experiment_noniid.py", argv)


if __name__ == "__main__":
    main()
