"""The FedAvg model against the ensemble of its shard models: error and prediction cost.

For each --data directory, starts a real local cluster (scripts/local_cluster.py), trains
with the real client (`--model-out` and `--ensemble-out`: the final FedAvg model, and the
last round's per-shard models, the seed's weak learners, as one ensemble averaging their
class probabilities), then measures both models on the directory's validation rows:
error and mean loss in process (mlcore.servable), prediction cost in process (rows/s of
Servable.predict_proba over all validation rows, one thread, best of --repeats) and, unless
--no-cluster, through the cluster (`client predict`'s path: 1,000-row requests, the whole
validation file, best of --repeats) with the cluster's error checked against the in-process
one. Ends with one key=value line.

Usage (the real UCI letters, converted once; the default data is the built-in letters):
    .venv/bin/python -m letters split ../shared/data/letter-recognition.data /tmp/uci \\
        --shards 16 --validate 4000
    .venv/bin/python scripts/compare_ensemble.py --data letters --data /tmp/uci
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
import numpy as np  # noqa: E402
from bench_time_to_accuracy import training_options  # noqa: E402
from local_cluster import POLICY_CHOICE, REPO, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from client.dataset import UnknownDataDir, resolve_data_dir  # noqa: E402
from client.serving import ServingFailed, ServingLink, read_model_file  # noqa: E402
from mlcore.data import DataError, read_data_dir  # noqa: E402
from mlcore.servable import Servable  # noqa: E402
from runtime.cli import FiniteRange, run_cli  # noqa: E402

CHUNK_ROWS = 1000


@dataclass
class Measured:
    data: str
    kind: str  # "fedavg" or "ensemble"
    members: int
    error: float
    mean_loss: float
    inproc_rows_s: float
    cluster_rows_s: float | None


def best_rate(n_rows: int, repeats: int, work) -> float:
    """Rows per second of `work()` over `n_rows` rows: the best of `repeats` timed runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return n_rows / best


def train(coordinator, data: str, out: Path, args) -> None:
    """The real client: the model and the ensemble files in `out`."""
    argv = [sys.executable, "-m", "client", coordinator.host, str(coordinator.port), data,
            str(args.rounds), str(args.epochs), str(args.hidden), repr(args.eta),
            "--batch-size", str(args.batch_size), "--momentum", repr(args.momentum),
            "--init", args.init, "--seed", str(args.seed), "--timing", str(out / "timing.txt"),
            "--model-out", str(out / "model.npz"), "--ensemble-out", str(out / "ensemble.npz")]
    if args.standardize:
        argv.append("--standardize")
    print("  $ python -m client HOST PORT " + " ".join(argv[5:]), flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          timeout=args.timeout_s)
    if done.returncode != 0:
        raise click.ClickException(f"training on {data} failed: "
                                   + " ".join(done.stderr.split())[-400:])
    for line in done.stdout.splitlines():
        if line.startswith(("final", "ensemble")):
            print(f"  {line}", flush=True)


def measure(data: str, out: Path, coordinator, args) -> list[Measured]:
    """Both models of one run: error, loss, rows/s in process and through the cluster."""
    data_dir, _ = resolve_data_dir(Path(data))
    validate = read_data_dir(data_dir).validate
    results = []
    link = None if coordinator is None else ServingLink([coordinator], deadline_s=60.0)
    try:
        for kind in ("model", "ensemble"):
            model = read_model_file(out / f"{kind}.npz")
            servable = model.servable
            scores = servable.score(validate.x, validate.y)
            inproc = best_rate(validate.n_rows, args.repeats,
                               lambda s=servable: s.predict_proba(validate.x))
            cluster_rate = None
            if link is not None:
                labels = link.predict(model, validate.x, chunk_rows=CHUNK_ROWS).labels
                errors = int(np.count_nonzero(labels != validate.y))
                if errors != scores.n_errors:
                    raise click.ClickException(
                        f"{data} {kind}: the cluster's labels give {errors} errors, in "
                        f"process {scores.n_errors}")
                cluster_rate = best_rate(
                    validate.n_rows, args.repeats,
                    lambda m=model: link.predict(m, validate.x, True, CHUNK_ROWS))
            results.append(Measured(data, "fedavg" if kind == "model" else "ensemble",
                                    len(servable.members), scores.error, scores.mean_loss,
                                    inproc, cluster_rate))
        print("  " + members_line(out, validate), flush=True)
    finally:
        if link is not None:
            link.close()
    return results


def members_line(out: Path, validate) -> str:
    """How far the shard models are from each other and from the FedAvg model."""
    fedavg = read_model_file(out / "model.npz").servable
    ensemble = read_model_file(out / "ensemble.npz").servable
    labels = fedavg.predict(validate.x)
    singles = [Servable((m,), ensemble.standardization) for m in ensemble.members]
    errors = [s.score(validate.x, validate.y).error for s in singles]
    agree = [float(np.mean(s.predict(validate.x) == labels)) for s in singles]
    same = float(np.mean(ensemble.predict(validate.x) == labels))
    return (f"shard models alone: error {min(errors):.2%}..{max(errors):.2%}, each agrees with "
            f"the FedAvg model on {min(agree):.1%}..{max(agree):.1%} of rows; the ensemble "
            f"on {same:.1%}")


def report(rows: list[Measured]) -> None:
    header = (f"{'data':<22} {'model':<9} {'members':>7} {'error':>7} {'mean loss':>9} "
              f"{'in-proc rows/s':>14} {'us/row':>7} {'cluster rows/s':>14}")
    print(header)
    print("-" * len(header))
    for m in rows:
        cluster = f"{m.cluster_rows_s:14,.0f}" if m.cluster_rows_s else f"{'-':>14}"
        print(f"{m.data[-22:]:<22} {m.kind:<9} {m.members:>7} {m.error:>7.2%} "
              f"{m.mean_loss:>9.4f} {m.inproc_rows_s:>14,.0f} {1e6 / m.inproc_rows_s:>7.2f} "
              f"{cluster}")


def key_values(rows: list[Measured]) -> str:
    parts = []
    for i in range(0, len(rows) - 1, 2):
        fed, ens = rows[i], rows[i + 1]
        tag = f"d{i // 2 + 1}"
        parts += [f"{tag}_fedavg_error={fed.error:.5f}", f"{tag}_ensemble_error={ens.error:.5f}",
                  f"{tag}_ensemble_cost_x={fed.inproc_rows_s / ens.inproc_rows_s:.2f}"]
        if fed.cluster_rows_s and ens.cluster_rows_s:
            parts.append(f"{tag}_cluster_cost_x={fed.cluster_rows_s / ens.cluster_rows_s:.2f}")
    return " ".join(parts)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--data", "datas", multiple=True, default=["letters"], show_default=True,
              help="Data dir (train_*.txt, one validate_*.txt) or `letters`; repeatable.")
@click.option("--nodes", type=click.IntRange(min=1), default=2, show_default=True,
              help="Compute nodes.")
@click.option("--policy", type=POLICY_CHOICE, default="round-robin", show_default=True)
@training_options
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per cost figure (the best counts).")
@click.option("--cluster/--no-cluster", "through_cluster", default=True, show_default=True,
              help="Also time predictions through the cluster.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Logs, timing.txt and model files go here [a temporary directory].")
@click.option("--timeout-s", type=FiniteRange(min=0, min_open=True, max=86400), default=900.0,
              show_default=True, help="Give up on a training run after this many seconds.")
def cli(datas: tuple[str, ...], nodes: int, policy: str, through_cluster: bool,
        workdir: Path | None, **settings: object) -> None:
    """The FedAvg model against the ensemble of its shard models: error and prediction cost."""
    args = SimpleNamespace(**settings)
    for data in datas:
        try:
            resolve_data_dir(Path(data))
        except UnknownDataDir as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="compare-ensemble-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {date.today().isoformat()}; "
          f"{nodes} nodes, policy {policy}; work in {workdir}", flush=True)
    rows: list[Measured] = []
    with LocalCluster(workdir) as cluster:
        for _ in range(nodes):
            cluster.add_node(0.0, "--load-delay-s", "0")
        coordinator = cluster.add_coordinator(policy).address
        for i, data in enumerate(datas, start=1):
            out = workdir / f"run{i}"
            out.mkdir(exist_ok=True)
            print(f"== {data}", flush=True)
            train(coordinator, data, out, args)
            try:
                rows += measure(data, out, coordinator if through_cluster else None, args)
            except (ServingFailed, DataError, ValueError) as exc:
                raise click.ClickException(str(exc)) from None
    print()
    report(rows)
    print("in-proc = Servable.predict_proba over all validation rows, one thread; cluster = "
          f"the client's predict path, {CHUNK_ROWS}-row requests (best of {args.repeats}).")
    print(key_values(rows))


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "compare_ensemble.py", argv)


if __name__ == "__main__":
    main()
