"""How the cluster scales: many nodes, much data, a big model.

Three parts, each selectable with --part (nodes | data | model | all):

- nodes: ONE real coordinator process over 10, 100 and 1,000 simulated node endpoints
  (scripts/sim_nodes.py: one light process serving every endpoint, answering train() after
  --delay-s without training), rounds of 10,000 tasks of a tiny shard. Prints the
  coordinator's CPU per task (utime+stime from /proc/PID/stat around each round, divided by
  the tasks), tasks per second, the coordinator's peak RSS (VmHWM), and the heartbeat's
  cost (the idle coordinator's CPU per second with every endpoint being probed).
- data: generated letters at 20k, 200k and 1M rows on a local cluster of 2 real nodes: round
  time per row (fixed per-row workload), each node's peak RSS against its shards' size, and
  proof that the second round sends no shard bytes (coordinator's shard_uploads counter and
  the nodes' put_shard log events).
- model: a ~10M-parameter model through client -> coordinator -> node -> coordinator ->
  client: tensor bytes moved per second of transfer time, bytes sent to nodes per round
  (--model-shards tasks on --model-nodes nodes), and peak RSS against model size.

With --tls the data and model parts run on clusters with mutual TLS on every hop
(throwaway certificates made with the openssl command); the nodes part's simulated
endpoints speak plain text only, so it stays plain.

Usage: .venv/bin/python scripts/bench_scale.py [--part all] [--quick] [--tls]
Ends with one key=value line of headline figures.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
import numpy as np  # noqa: E402
from local_cluster import (  # noqa: E402
    LocalCluster,
    Pki,
    ServerProcess,
    start_coordinator,
    throwaway_pki,
)
from sim_nodes import start_sim_nodes  # noqa: E402

from idl.gen import Coordinator  # noqa: E402
from idl.gen.ttypes import RoundRequest, ShardRef, TrainConfig  # noqa: E402
from idl.rpc import Connection, connect  # noqa: E402
from idl.tensors import encode_tensors  # noqa: E402
from idl.tls import client_context  # noqa: E402
from runtime.cli import FiniteRange, ListType, old_unit_alias, run_cli  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
CALL_TIMEOUT_S = 600.0


# ---------------------------------------------------------------------------- measuring


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def verdict(name: str, value: float, goal: float, unit: str, *, at_most: bool) -> bool:
    """Print `goal NAME: value -> met` or `MISSED by ...`; True when met."""
    met = value <= goal if at_most else value >= goal
    sign = "<=" if at_most else ">="
    if met:
        outcome = "met"
    else:
        outcome = f"MISSED by {abs(value - goal):.3g} {unit} ({value / goal:.2f}x the goal)"
    print(f"goal {name} {sign} {goal:g} {unit}: {value:.3g} {unit} -> {outcome}")
    return met


def coordinator_client(proc: ServerProcess, pki: Pki | None = None) -> Connection:
    """A connection to the coordinator, over TLS with the client certificate given `pki`."""
    tls = client_context(pki.client) if pki else None
    return connect(Coordinator.Client, proc.address, CALL_TIMEOUT_S, tls)


def cluster(workdir: Path, args: SimpleNamespace) -> LocalCluster:
    """A local cluster, TLS on every hop with --tls."""
    return LocalCluster(workdir, tls=args.pki.server if args.pki else None)


# ---------------------------------------------------------------------------- part: nodes

TINY_SHARD = b"".join(f"{','.join(str((i * 7 + j) % 16) for j in range(16))},{i % 26}\n"
                      .encode() for i in range(4))


def tiny_weights() -> list:
    rng = np.random.default_rng(1)
    return encode_tensors([rng.uniform(-0.01, 0.01, s) for s in ((16, 2), (2,), (2, 26), (26,))])


def run_nodes_part(workdir: Path, args: SimpleNamespace) -> dict[str, float]:
    counts = args.node_counts
    tasks = args.tasks
    print(f"\n== nodes: one coordinator, {tasks:,} tasks per round, simulated endpoints "
          f"answering after {args.delay_s * 1000:g} ms ==")
    print("coordinator runs with --log-level WARNING (per-task events are INFO) and "
          f"--heartbeat-s {args.heartbeat_s:g}; policy round-robin; {args.rounds} rounds, "
          "median of rounds 2.. (round 1 uploads the shard to every endpoint)")
    sim, endpoints = start_sim_nodes(workdir / "sim", max(counts), args.delay_s,
                                     "--log-level", "WARNING")
    digest = hashlib.sha256(TINY_SHARD).hexdigest()
    ref = ShardRef(name="tiny", digest=digest, n_rows=4, n_bytes=len(TINY_SHARD))
    weights = tiny_weights()
    rows = {}
    try:
        header = (f"{'nodes':>5} {'round s':>8} {'tasks/s':>8} {'CPU/task ms':>11} "
                  f"{'peak RSS MB':>11} {'heartbeat CPU ms/s':>18} {'hb % of core':>12}")
        print(header)
        print("-" * len(header))
        for n in counts:
            coord = start_coordinator(
                workdir / f"coord-{n}", "round-robin", endpoints[:n], "--log-level", "WARNING",
                "--heartbeat-s", str(args.heartbeat_s), "--straggler-factor", "0",
            )
            try:
                rows[n] = measure_nodes(coord, ref, weights, tasks, args)
            finally:
                coord.stop()
            r = rows[n]
            print(f"{n:>5} {r['round_s']:>8.2f} {r['tasks_per_s']:>8.0f} "
                  f"{r['cpu_ms_per_task']:>11.3f} {r['rss_mb']:>11.1f} "
                  f"{r['hb_ms_per_s']:>18.1f} {r['hb_ms_per_s'] / 10:>12.1f}")
    finally:
        sim.stop()
    lo, hi = rows[counts[0]], rows[counts[-1]]
    flat = hi["cpu_ms_per_task"] / lo["cpu_ms_per_task"]
    print(f"\nCPU per task at {counts[-1]} vs {counts[0]} nodes: {flat:.2f}x")
    print("tasks/s is bounded by the simulated nodes' process too (it shares the 2 cores).")
    worst_cpu = max(r["cpu_ms_per_task"] for r in rows.values())
    worst_rss = max(r["rss_mb"] for r in rows.values())
    verdict("coordinator CPU per task (worst)", worst_cpu, 0.2, "ms", at_most=True)
    verdict("coordinator peak RSS (worst)", worst_rss, 300, "MB", at_most=True)
    verdict(f"CPU per task {counts[-1]} vs {counts[0]} nodes (flat)", flat, 1.25, "x",
            at_most=True)
    return {
        "nodes_cpu_ms_per_task": worst_cpu,
        "nodes_cpu_ratio_1000_vs_10": flat,
        "nodes_rss_mb": worst_rss,
        "nodes_tasks_per_s": hi["tasks_per_s"],
        "nodes_heartbeat_ms_per_s": hi["hb_ms_per_s"],
    }


def measure_nodes(coord: ServerProcess, ref: ShardRef, weights: list, tasks: int,
                  args: SimpleNamespace) -> dict[str, float]:
    conn = coordinator_client(coord)
    try:
        conn.client.put_shard(ref.digest, TINY_SHARD, "")
        # Heartbeat alone: the idle coordinator, every endpoint probed each --heartbeat-s.
        time.sleep(args.heartbeat_s)  # let the first full beat start
        before = cpu_s(coord.pid)
        began = time.monotonic()
        time.sleep(args.idle_s)
        hb_ms_per_s = (cpu_s(coord.pid) - before) / (time.monotonic() - began) * 1000
        walls, cpus = [], []
        for round_no in range(1, args.rounds + 1):
            request = RoundRequest(
                job_id="scale", round=round_no, weights=weights, shards=[ref] * tasks,
                config=TrainConfig(epochs=1, eta=1e-3), deadline_s=300.0,
            )
            before = cpu_s(coord.pid)
            began = time.monotonic()
            result = conn.client.run_round(request)
            walls.append(time.monotonic() - began)
            cpus.append(cpu_s(coord.pid) - before)
            if len(result.results) != tasks:
                sys.exit(f"bench_scale: round returned {len(result.results)} results")
    finally:
        conn.close()
    steady = slice(1, None) if args.rounds > 1 else slice(None)
    wall = statistics.median(walls[steady])
    cpu = statistics.median(cpus[steady])
    # The heartbeat keeps running during a round; its share is in the CPU figure too.
    return {
        "round_s": wall,
        "tasks_per_s": tasks / wall,
        "cpu_ms_per_task": cpu / tasks * 1000,
        "rss_mb": peak_rss_mb(coord.pid),
        "hb_ms_per_s": hb_ms_per_s,
    }


# ---------------------------------------------------------------------------- part: data


def letters_dir(cache: Path, rows: int) -> Path:
    """Generated letters with `rows` rows (1,000 of them validation) in 16 shards, made once."""
    out = cache / f"letters-{rows}"
    if not (out / "validate_letters.txt").exists() or len(list(out.glob("train_*.txt"))) != 16:
        print(f"generating {rows:,} rows into {out} (about 100 s per million rows)...",
              flush=True)
        subprocess.run([sys.executable, "-m", "letters", "generate", str(out), "--samples",
                        str(rows), "--shards", "16", "--validate", "1000", "--seed", "1",
                        "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return out


def run_data_part(workdir: Path, args: SimpleNamespace) -> dict[str, float]:
    sizes = args.data_rows
    cache = args.cache_dir or workdir / "letters"
    print(f"\n== data: generated letters, 16 shards, 2 real nodes, round-robin; per round "
          f"{args.data_epochs} full-batch epochs, h = 24, {args.data_rounds} rounds, median of "
          "rounds 2.. ==")
    rows_out = {}
    for n in sizes:
        rows_out[n] = measure_data(workdir / f"run-{n}", letters_dir(cache, n), n, args)
    header = (f"{'rows':>9} {'round s':>8} {'us/row':>7} {'vs first':>8} "
              f"{'node shards MB':>14} {'node peak RSS MB':>16} {'limit MB':>8} "
              f"{'uploads r1':>10} {'uploads r2..':>12}")
    print(header)
    print("-" * len(header))
    first = rows_out[sizes[0]]["us_per_row"]
    for n, r in rows_out.items():
        print(f"{n:>9,} {r['round_s']:>8.3f} {r['us_per_row']:>7.3f} "
              f"{r['us_per_row'] / first:>8.2f} {r['shards_mb']:>14.1f} {r['rss_mb']:>16.1f} "
              f"{r['limit_mb']:>8.0f} {r['uploads_r1']:>10} {r['uploads_later']:>12}")
    print("uploads = shard bytes sent to nodes: the coordinator's shard_uploads counter and the "
          "nodes' event=shard_stored log lines, read after round 1 and after the last round; "
          "node figures are the worst of the 2 nodes.")
    last = rows_out[sizes[-1]]
    ratio = last["us_per_row"] / first
    verdict(f"round time per row at {sizes[-1]:,} vs {sizes[0]:,} rows", ratio, 1.2, "x",
            at_most=True)
    worst_mem = max(r["rss_mb"] / r["limit_mb"] for r in rows_out.values())
    verdict("node peak RSS / (3 x its shards + 150 MB) (worst)", worst_mem, 1.0, "x",
            at_most=True)
    later = sum(r["uploads_later"] for r in rows_out.values())
    verdict("shard uploads after round 1 (all sizes)", later, 0, "uploads", at_most=True)
    return {"data_per_row_ratio": ratio, "data_node_mem_vs_limit": worst_mem,
            "data_later_uploads": later}


def _stored_events(cluster: LocalCluster) -> list[int]:
    return [node.log().count("event=shard_stored") for node in cluster.nodes]


def measure_data(workdir: Path, data_dir: Path, n_rows: int,
                 args: SimpleNamespace) -> dict[str, float]:
    from mlcore.data import read_data_dir
    from mlcore.model import init_params

    data = read_data_dir(data_dir)
    shards = []
    for path, _ in data.train:
        raw = path.read_bytes()
        shards.append((ShardRef(name=path.name, digest=hashlib.sha256(raw).hexdigest(),
                                n_rows=_.n_rows, n_bytes=len(raw)), raw))
    params = init_params(data.n_features, 24, data.n_classes, seed=1)
    weights = encode_tensors(params.tensors())
    walls, uploads = [], []
    with cluster(workdir, args) as local:
        local.add_node(0.0, "--load-delay-s", "0")
        local.add_node(0.0, "--load-delay-s", "0")
        coord = local.add_coordinator("round-robin")
        conn = coordinator_client(coord, args.pki)
        try:
            for ref, raw in shards:
                conn.client.put_shard(ref.digest, raw, "")
            for round_no in range(1, args.data_rounds + 1):
                request = RoundRequest(
                    job_id="data", round=round_no, weights=weights,
                    shards=[ref for ref, _ in shards],
                    config=TrainConfig(epochs=args.data_epochs, eta=1e-6), deadline_s=600.0)
                began = time.perf_counter()
                conn.client.run_round(request)
                walls.append(time.perf_counter() - began)
                counters = conn.client.status("").counters
                uploads.append((counters.get("shard_uploads", 0), sum(_stored_events(local))))
        finally:
            conn.close()
        node_rss = [peak_rss_mb(node.pid) for node in local.nodes]
    # Round robin over 2 nodes places shard i on node i % 2 every round.
    per_node_mb = [sum(len(raw) for j, (_, raw) in enumerate(shards) if j % 2 == i) / 1e6
                   for i in range(2)]
    worst = max(range(2), key=lambda i: node_rss[i] / (3 * per_node_mb[i] + 150))
    round_s = statistics.median(walls[1:] if len(walls) > 1 else walls)
    n_train = sum(ref.n_rows for ref, _ in shards)
    return {
        "round_s": round_s,
        "us_per_row": round_s / n_train * 1e6,
        "shards_mb": per_node_mb[worst],
        "rss_mb": node_rss[worst],
        "limit_mb": 3 * per_node_mb[worst] + 150,
        "uploads_r1": f"{uploads[0][0]}/{uploads[0][1]}",
        "uploads_later": (uploads[-1][0] - uploads[0][0]) + (uploads[-1][1] - uploads[0][1]),
    }


# ---------------------------------------------------------------------------- part: model

MODEL_D, MODEL_H, MODEL_K = 1000, 10_000, 26


def model_shard(rows: int = 4) -> bytes:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 16, size=(rows, MODEL_D))
    return b"".join((",".join(map(str, r)) + f",{i % MODEL_K}\n").encode()
                    for i, r in enumerate(x))


def run_model_part(workdir: Path, args: SimpleNamespace) -> dict[str, float]:
    d, h, k = MODEL_D, args.model_h, MODEL_K
    n_params = d * h + h + h * k + k
    model_mb = n_params * 8 / 1e6
    n_nodes, n_shards = args.model_nodes, args.model_shards
    print(f"\n== model: d={d} h={h:,} k={k}: {n_params:,} parameters = {model_mb:.1f} MB of "
          f"float64, 1 epoch on a 4-row shard, {n_shards} shard task(s) on {n_nodes} node(s), "
          "round-robin ==")
    rng = np.random.default_rng(1)
    weights = encode_tensors([rng.uniform(-0.01, 0.01, s) for s in ((d, h), (h,), (h, k), (k,))])
    tensor_bytes = sum(len(t.data) for t in weights)
    shard = model_shard()
    ref = ShardRef(name="wide", digest=hashlib.sha256(shard).hexdigest(), n_rows=4,
                   n_bytes=len(shard))
    rows = []
    with cluster(workdir, args) as local:
        nodes = [local.add_node(0.0, "--load-delay-s", "0") for _ in range(n_nodes)]
        coord = local.add_coordinator("round-robin")
        conn = coordinator_client(coord, args.pki)
        try:
            conn.client.put_shard(ref.digest, shard, "")
            sent_before = conn.client.status("").counters.get("bytes_to_nodes")
            for round_no in range(1, args.model_rounds + 1):
                # New weights each round, as training makes them (b2 differs: a new digest).
                weights[3] = encode_tensors([np.full(k, 0.01 * round_no)])[0]
                request = RoundRequest(job_id="wide", round=round_no, weights=weights,
                                       shards=[ref] * n_shards,
                                       config=TrainConfig(epochs=1, eta=1e-3), deadline_s=600.0)
                began = time.perf_counter()
                result = conn.client.run_round(request)
                wall = time.perf_counter() - began
                compute = max(r.timings.compute_s for r in result.results)
                delta_bytes = sum(len(t.data) for r in result.results for t in r.delta)
                sent_after = conn.client.status("").counters.get("bytes_to_nodes")
                rows.append((wall, compute, delta_bytes, _bytes_to_nodes(
                    sent_before, sent_after, result, tensor_bytes)))
                sent_before = sent_after
        finally:
            conn.close()
        coord_rss = peak_rss_mb(coord.pid)
        node_rss = max(peak_rss_mb(node.pid) for node in nodes)
    header = (f"{'round':>5} {'wall s':>7} {'node compute s':>14} {'transfer s':>10} {'MB/s':>7} "
              f"{'MB to nodes':>11}")
    print(header)
    print("-" * len(header))
    rates = []
    for i, (wall, compute, delta_bytes, (sent, _source)) in enumerate(rows, 1):
        moved = tensor_bytes + delta_bytes
        transfer = wall - compute
        rates.append(moved / transfer / 1e6)
        print(f"{i:>5} {wall:>7.3f} {compute:>14.3f} {transfer:>10.3f} {rates[-1]:>7.0f} "
              f"{sent / 1e6:>11.1f}")
    steady = slice(1, None) if len(rows) > 1 else slice(None)
    rate = statistics.median(rates[steady])
    wall_s = statistics.median(r[0] for r in rows[steady])
    sent_mb = statistics.median(r[3][0] for r in rows[steady]) / 1e6
    print(f"MB/s = (weights sent + deltas returned = {(tensor_bytes + rows[0][2]) / 1e6:.0f} MB) "
          "/ (client's round wall time - the slowest task's compute_s); each byte crosses two "
          "hops (client-coordinator, coordinator-node) each way, so the wire carries twice that.")
    print(f"MB to nodes = tensor and shard bytes the coordinator sent to nodes in the round "
          f"({rows[-1][3][1]}); the model is {tensor_bytes / 1e6:.0f} MB, so the least a round "
          f"can send is {min(n_nodes, n_shards) * tensor_bytes / 1e6:.0f} MB.")
    print(f"median of rounds 2..: round {wall_s:.3f} s, {sent_mb:.0f} MB to nodes")
    print(f"peak RSS: coordinator {coord_rss:.0f} MB = {coord_rss / model_mb:.1f}x the model, "
          f"node {node_rss:.0f} MB = {node_rss / model_mb:.1f}x the model "
          f"(model {model_mb:.0f} MB; the largest of {n_nodes} node(s))")
    verdict("tensor bytes per second of round trip (median of rounds 2..)", rate, 300, "MB/s",
            at_most=False)
    verdict(f"coordinator peak RSS over {len(rows)} rounds / model", coord_rss / model_mb, 2.5,
            "x", at_most=True)
    verdict(f"node peak RSS over {len(rows)} rounds / model", node_rss / model_mb, 3, "x",
            at_most=True)
    return {"model_mb_per_s": rate, "model_coord_rss_x": coord_rss / model_mb,
            "model_node_rss_x": node_rss / model_mb, "model_round_s": wall_s,
            "model_mb_to_nodes_per_round": sent_mb}


def _bytes_to_nodes(before: int | None, after: int | None, result: object,
                    tensor_bytes: int) -> tuple[float, str]:
    """Bytes the coordinator sent to nodes in one round, and where the figure came from.

    Its bytes_to_nodes counter when it keeps one; otherwise (a coordinator from before the
    counter) every attempt carried the weights, so attempts x the weights' bytes.
    """
    if before is not None and after is not None:
        return after - before, "the coordinator's bytes_to_nodes counter"
    attempts = sum(r.attempts for r in result.records)  # type: ignore[attr-defined]
    return attempts * tensor_bytes, "no counter: attempts x the weights' bytes"


# ---------------------------------------------------------------------------- main


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--part", type=click.Choice(["nodes", "data", "model", "all"]), default="all",
              show_default=True)
@click.option("--quick", is_flag=True, help="Smaller sizes, for a smoke run.")
@click.option("--node-counts", type=ListType(click.IntRange(1, 5000)), default="10,100,1000",
              show_default=True, help="Simulated endpoints per measurement, comma-separated.")
@click.option("--tasks", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--delay-s", type=FiniteRange(min=0, max=60), default=0.001, show_default=True,
              help="Seconds a simulated endpoint takes to answer train().")
@old_unit_alias("--delay-ms", "delay_s", 1e-3, FiniteRange(min=0, max=60_000))
@click.option("--heartbeat-s", type=FiniteRange(min=0.05, max=3600), default=1.0,
              show_default=True)
@click.option("--idle-s", type=FiniteRange(min=0, min_open=True, max=3600), default=3.0,
              show_default=True, help="Seconds the idle coordinator's heartbeat is measured.")
@click.option("--data-rows", type=ListType(click.IntRange(min=2000)),
              default="20000,200000,1000000", show_default=True)
@click.option("--data-epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--data-rounds", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--model-rounds", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--model-nodes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Model part: nodes in the cluster.")
@click.option("--model-shards", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Model part: shard tasks per round (the same 4-row shard each time). A "
              "round's result carries one delta per shard and a message is at most 256 MB: "
              "3 shards of the default model, 16 of --model-h 1500.")
@click.option("--model-h", type=click.IntRange(1, 100_000), default=MODEL_H, show_default=True,
              help="Model part: hidden units (d = 1000, k = 26).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep generated letters here between runs.")
@click.option("--tls", is_flag=True, help="Data and model parts: mutual TLS on every hop.")
def cli(**options: object) -> None:
    args = SimpleNamespace(**options)
    if args.quick:
        args.tasks = min(args.tasks, 2000)
        args.idle_s = min(args.idle_s, 2.0)
        args.data_rows = [20000, 100000]
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
          + ("; mutual TLS on every hop (data and model parts)" if args.tls else ""))
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        args.pki = throwaway_pki(Path(tmp) / "pki") if args.tls else None
        if args.part in ("nodes", "all"):
            figures |= run_nodes_part(Path(tmp) / "nodes", args)
        if args.part in ("data", "all"):
            figures |= run_data_part(Path(tmp) / "data", args)
        if args.part in ("model", "all"):
            figures |= run_model_part(Path(tmp) / "model", args)
    print(" ".join(f"{k}={v:.4g}" for k, v in figures.items()))


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_scale.py", argv)


if __name__ == "__main__":
    main()
