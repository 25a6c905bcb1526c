"""What the cluster costs: a round's wall time against the same work in one process.

Starts a real local cluster with 1, 2 and 4 compute nodes, runs the seed's workload
(3 rounds, 75 full-batch epochs, h = 24, 16 shards of the default letters data)
through the real client, and reads the round and task times from its timing.txt.
Side by side in the same run:

- in-process: the same rounds trained and averaged in this one process;
- ideal: the sum of the nodes' compute times divided by the cores in use
  (min(nodes, cores)), i.e. a cluster with zero overhead. With more nodes than
  cores the nodes time-slice and their compute times stretch, so a second ideal,
  the in-process time divided by the cores in use, is printed beside it;
- per-task overhead: rounds of near-empty tasks (1 epoch, h = 1), wall time per task;
- with --tls: both workloads on clusters with mutual TLS on every hop (throwaway
  certificates made with the openssl command) against plain ones, in --repeats pairs of
  runs alternating which goes first (the machine is shared: drift hits both alike),
  medians over all their steady rounds, and the TLS/plain ratios.

Usage: .venv/bin/python scripts/bench_round.py [--data DIR] [--nodes 1,2,4] [--rounds 3] [--tls]
Ends with one key=value line of headline figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from local_cluster import REPO, LocalCluster, Pki, throwaway_pki  # noqa: E402

from client.timing import read_timing  # noqa: E402
from mlcore.data import read_data_dir  # noqa: E402
from mlcore.fedavg import fedavg  # noqa: E402
from mlcore.model import Params, init_params, train  # noqa: E402
from runtime.cli import ListType, run_cli  # noqa: E402


def in_process_round_s(data_dir: Path, rounds: int, epochs: int, hidden: int,
                       eta: float) -> float:
    """Median seconds per round when one process does all the training and averaging."""
    data = read_data_dir(data_dir)
    params = init_params(data.n_features, hidden, data.n_classes, seed=1)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        updates = []
        for _, shard in data.train:
            out = train(params, shard.x, shard.y, epochs=epochs, eta=eta)
            delta = Params.from_tensors([a - b for a, b in zip(out.params.tensors(),
                                                               params.tensors(), strict=True)])
            updates.append((delta, shard.n_rows))
        params = fedavg(params, updates)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_cluster(workdir: Path, n_nodes: int, data_dir: Path, train_args: list[str],
                pki: Pki | None = None) -> list:
    """Run the client on a fresh local cluster (TLS on every hop with `pki`); return
    timing.txt's rows."""
    timing = workdir / "timing.txt"
    with LocalCluster(workdir, tls=pki.server if pki else None) as cluster:
        for _ in range(n_nodes):
            cluster.add_node(0.0, "--load-delay-s", "0")
        coordinator = cluster.add_coordinator("round-robin")
        argv = [sys.executable, "-m", "client", coordinator.address.host,
                str(coordinator.address.port), str(data_dir), *train_args,
                "--timing", str(timing), *(pki.client.args() if pki else [])]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
        if done.returncode != 0:
            sys.exit(f"bench_round: the client failed:\n{done.stderr}")
    return read_timing(timing)[1]


def side_by_side(workdir: Path, n_nodes: int, data_dir: Path, train_args: list[str], pki: Pki,
                 repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Plain and TLS runs of one workload, interleaved; each summarised over all its runs."""
    rows: dict[str, list] = {"plain": [], "tls": []}
    for i in range(repeats):
        order = ("plain", "tls") if i % 2 == 0 else ("tls", "plain")
        for kind in order:
            run = run_cluster(workdir / f"{kind}-{i}", n_nodes, data_dir, train_args,
                              pki if kind == "tls" else None)
            rows[kind].append(run)
    return pooled(rows["plain"]), pooled(rows["tls"])


def pooled(runs: list[list[dict]]) -> dict[str, float]:
    """Like summarise, over the steady rounds of several runs together."""
    walls, tasks = [], []
    for rows in runs:
        rounds = [r for r in rows if r["kind"] == "round"]
        for row in rounds[1:] or rounds:
            walls.append(float(row["round_s"]))
            tasks.append(sum(1 for r in rows if r["kind"] == "task"
                             and r["round"] == row["round"]))
    return {"wall_s": statistics.median(walls), "tasks": statistics.median(tasks),
            "rounds": len(walls)}


def summarise(rows: list[dict], n_nodes: int) -> dict[str, float]:
    """Median over rounds (the first round pays shard uploads and is left out if possible)."""
    rounds = [r for r in rows if r["kind"] == "round"]
    steady = [r["round"] for r in rounds[1:]] or [rounds[0]["round"]]
    wall, ideal, n_tasks = [], [], []
    for round_no in steady:
        tasks = [r for r in rows if r["kind"] == "task" and r["round"] == round_no]
        row = next(r for r in rounds if r["round"] == round_no)
        wall.append(float(row["round_s"]))
        compute = sum(float(t["compute_s"]) for t in tasks)
        ideal.append(compute / min(n_nodes, os.cpu_count() or 1))
        n_tasks.append(len(tasks))
    return {"wall_s": statistics.median(wall), "ideal_s": statistics.median(ideal),
            "tasks": statistics.median(n_tasks)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Data directory [the default letters data].")
@click.option("--nodes", "node_counts", type=ListType(click.IntRange(min=1)), default="1,2,4",
              show_default=True, help="Node counts to measure, comma-separated.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--tls", is_flag=True, help="Also run every workload with mutual TLS on every hop.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --tls: pairs of plain and TLS runs per workload.")
def cli(data: Path | None, node_counts: list[int], rounds: int, tls: bool,
        repeats: int) -> None:
    import letters

    data = data or letters.default_data_dir()
    seed_args = [str(rounds), "75", "24", "1e-4"]
    empty_args = ["4", "1", "1", "1e-4"]

    local_s = in_process_round_s(data, rounds, 75, 24, 1e-4)
    print(f"machine: {os.cpu_count()} cores; data {data}; workload: 16 shards x 75 "
          f"epochs, h = 24 (seed's), {rounds} rounds")
    print(f"in-process round: {local_s * 1000:.1f} ms (one process trains all shards)\n")
    header = (f"{'nodes':>5} {'round ms':>9} {'ideal ms':>9} {'round/ideal':>11} "
              f"{'in-proc/cores ms':>16} {'round/that':>10} "
              f"{'empty-task round ms':>19} {'overhead/task ms':>16}")
    print(header)
    print("-" * len(header))
    figures = {}
    tls_rows: dict[int, tuple[dict, dict, dict, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        pki = throwaway_pki(Path(tmp) / "pki") if tls else None
        for n in node_counts:
            seed_run = summarise(run_cluster(Path(tmp) / f"seed-{n}", n, data, seed_args), n)
            empty = summarise(run_cluster(Path(tmp) / f"empty-{n}", n, data, empty_args), n)
            if pki:
                tls_rows[n] = (
                    *side_by_side(Path(tmp) / f"tls-seed-{n}", n, data, seed_args, pki,
                                  repeats),
                    *side_by_side(Path(tmp) / f"tls-empty-{n}", n, data, empty_args, pki,
                                  repeats),
                )
            per_task_ms = empty["wall_s"] / empty["tasks"] * 1000
            vs_ideal = seed_run["wall_s"] / seed_run["ideal_s"]
            vs_local = seed_run["wall_s"] / local_s
            scaled_s = local_s / min(n, os.cpu_count() or 1)
            vs_scaled = seed_run["wall_s"] / scaled_s
            print(f"{n:>5} {seed_run['wall_s'] * 1000:>9.1f} {seed_run['ideal_s'] * 1000:>9.1f} "
                  f"{vs_ideal:>11.2f} {scaled_s * 1000:>16.1f} {vs_scaled:>10.2f} "
                  f"{empty['wall_s'] * 1000:>19.1f} {per_task_ms:>16.2f}")
            figures[n] = (vs_ideal, vs_local, per_task_ms, vs_scaled)
    print("\nround = the client's wall time per round (send weights, schedule, train, return, "
          "FedAvg, validate);\nideal = sum of node compute / cores in use; medians over "
          "rounds 2.. (round 1 uploads the shards).")
    if tls_rows:
        print_tls(tls_rows)
    print(" ".join(f"n{n}_vs_ideal={v[0]:.2f} n{n}_vs_inprocess_per_core={v[3]:.2f} "
                   f"n{n}_vs_inprocess={v[1]:.2f} n{n}_overhead_per_task_ms={v[2]:.2f}"
                   for n, v in figures.items())
          + "".join(f" n{n}_tls_vs_plain={t[1]['wall_s'] / t[0]['wall_s']:.3f}"
                    f" n{n}_tls_vs_plain_empty={t[3]['wall_s'] / t[2]['wall_s']:.3f}"
                    for n, t in tls_rows.items()))


def print_tls(rows: dict[int, tuple[dict, dict, dict, dict]]) -> None:
    """Plain and TLS side by side: the seed's rounds and the near-empty ones, and the goal."""
    runs = next(iter(rows.values()))[0]["rounds"]
    print(f"\nmutual TLS on every hop (client -> coordinator -> nodes) vs plain: interleaved "
          f"runs, medians over {runs:g} steady rounds each:")
    header = (f"{'nodes':>5} {'plain round ms':>14} {'TLS round ms':>12} {'TLS/plain':>9} "
              f"{'plain task ms':>13} {'TLS task ms':>11} {'TLS/plain':>9}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for n, (plain, tls, plain_empty, tls_empty) in rows.items():
        ratio = tls["wall_s"] / plain["wall_s"]
        worst = max(worst, ratio)
        plain_task = plain_empty["wall_s"] / plain_empty["tasks"] * 1000
        tls_task = tls_empty["wall_s"] / tls_empty["tasks"] * 1000
        print(f"{n:>5} {plain['wall_s'] * 1000:>14.1f} {tls['wall_s'] * 1000:>12.1f} "
              f"{ratio:>9.3f} {plain_task:>13.2f} {tls_task:>11.2f} "
              f"{tls_task / plain_task:>9.3f}")
    outcome = "met" if worst <= 1.15 else f"MISSED ({worst:.3f}x)"
    print(f"goal TLS round <= 1.15x plain (seed's workload, worst over node counts): "
          f"{worst:.3f}x -> {outcome}")


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_round.py", argv)


if __name__ == "__main__":
    main()
