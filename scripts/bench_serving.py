"""What serving costs: predictions through a local cluster against the same model in process.

Starts a real local cluster on loopback (scripts/local_cluster.py): --nodes compute nodes
and two coordinators over the same nodes, one batching (--batch-max-rows, --batch-wait-s)
and one with --no-batching. Only one coordinator is under load at a time, so both see the
same idle nodes. The model is the demo's (scripts/demo.sh's default configuration: the
default letters, 10 rounds of 5 epochs, h = 256, mini-batch 64, momentum 0.9, He
initialisation, standardised inputs), trained by the real client through the batching
coordinator (`--model-out`), then uploaded to both coordinators.

At each concurrency level (1..64 clients) three workloads run back to back, in the same
order, --repeats times (interleaved, so drift on a shared machine hits all alike):
single-row requests with batching, single-row requests without, and 1,000-row requests
(through the batching coordinator; at --batch-max-rows or more a request goes alone
either way). A client is a thread with its own connection sending one predict() after
another; clients are spread over up to --client-procs processes (a few threads each), so
the client side is not one interpreter's GIL. Each level runs --duration-s seconds
(and at most --max-requests per client), latency is the client's wall time of one call.
The ceiling is an in-process forward pass of the same model (mlcore.servable
Servable.predict, one thread, best of 5) on 1,000-row and 1-row inputs.

Goals (printed as verdict lines): with 32 concurrent single-row clients batching gives
>= 3x the throughput of no batching; 1,000-row requests reach >= 1/3 of the in-process
rows/s (best level); with 1 client, batched single-row p99 < --batch-wait-s + 5 ms.
Writes serving.csv and serving.png to --out DIR (default: a temporary directory).
Ends with one key=value line.

Usage: .venv/bin/python scripts/bench_serving.py [--out DIR] [--quick]
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
import numpy as np  # noqa: E402
from local_cluster import REPO, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402

from client.serving import ServingFailed, ServingLink, read_model_file  # noqa: E402
from idl.gen import Coordinator  # noqa: E402
from idl.gen.ttypes import PredictRequest  # noqa: E402
from idl.rpc import Address, connect  # noqa: E402
from idl.tensors import encode_tensor  # noqa: E402
from mlcore.data import read_data_dir  # noqa: E402
from runtime.cli import FiniteRange, ListType, require_module, run_cli  # noqa: E402

# scripts/demo.sh's default training arguments (ROUNDS EPOCHS H ETA and options).
DEMO_TRAINING = ["10", "5", "256", "0.00625", "--batch-size", "64", "--momentum", "0.9",
                 "--init", "he", "--standardize"]
WORKLOADS = ("single/batching", "single/no-batching", "1000-row/batching")
CALL_TIMEOUT_S = 30.0
COLUMNS = ("workload", "clients", "rows_per_request", "repeats", "requests", "errors",
           "requests_s", "rows_s", "rows_s_min", "rows_s_max", "p50_ms", "p95_ms", "p99_ms",
           "mean_batch_rows", "coordinator_cpu_us_per_request", "nodes_cpu_us_per_request",
           "clients_cpu_us_per_request")


# ------------------------------------------------------------------------------ clients


def _client_thread(address: Address, request: PredictRequest, start: float, stop: float,
                   max_requests: int, out: list) -> None:
    """Requests one after another from `start` until `stop`; (latency_s, batch_rows, error)."""
    conn = connect(Coordinator.Client, address, CALL_TIMEOUT_S)
    try:
        conn.client.predict(request)  # warm: connection, model on the nodes
        while time.perf_counter() < start:
            time.sleep(0.0005)
        for _ in range(max_requests):
            began = time.perf_counter()
            if began >= stop:
                break
            try:
                answer = conn.client.predict(request)
                out.append((time.perf_counter() - began, answer.batch_rows or 0, 0))
            except Exception:  # noqa: BLE001 - a failure is data; the connection is redone
                out.append((time.perf_counter() - began, 0, 1))
                conn.close()
                conn = connect(Coordinator.Client, address, CALL_TIMEOUT_S)
    finally:
        conn.close()


def _client_process(pipe: Pipe, address: Address, requests: list[PredictRequest],
                    duration_s: float, max_requests: int) -> None:
    """One client process: its threads connect, it says ready, runs when told the start."""
    pipe.send("ready")
    start = pipe.recv()
    cpu0 = os.times()
    out: list = []
    threads = [threading.Thread(target=_client_thread, daemon=True,
                                args=(address, r, start, start + duration_s, max_requests, out))
               for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + CALL_TIMEOUT_S + 10)
    cpu1 = os.times()
    pipe.send((out, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)))
    pipe.close()


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One workload at one level, once."""

    latencies_s: list[float]
    batch_rows: list[int]
    errors: int
    wall_s: float
    coordinator_cpu_s: float
    nodes_cpu_s: float
    clients_cpu_s: float


def run_level(address: Address, requests: list[PredictRequest], n_clients: int,
              max_procs: int, duration_s: float, max_requests: int, coordinator_pid: int,
              node_pids: list[int]) -> Run:
    """n_clients concurrent clients, spread over up to max_procs processes, for duration_s."""
    n_procs = min(n_clients, max_procs)
    shares = [requests[i:n_clients:n_procs] for i in range(n_procs)]
    context = mp.get_context("fork")
    procs, pipes = [], []
    for share in shares:
        parent, child = context.Pipe()
        proc = context.Process(target=_client_process, daemon=True,
                               args=(child, address, share, duration_s, max_requests))
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    for pipe in pipes:
        if not pipe.poll(CALL_TIMEOUT_S) or pipe.recv() != "ready":
            raise click.ClickException("a client process did not start")
    time.sleep(0.05)
    start = time.perf_counter() + 0.2  # every thread connected and warmed by then
    coordinator0 = _proc_cpu_s(coordinator_pid)
    nodes0 = sum(_proc_cpu_s(p) for p in node_pids)
    for pipe in pipes:
        pipe.send(start)
    results = []
    for pipe in pipes:
        if not pipe.poll(duration_s + CALL_TIMEOUT_S + 30):
            raise click.ClickException("a client process did not finish in time")
        results.append(pipe.recv())
    coordinator_cpu = _proc_cpu_s(coordinator_pid) - coordinator0
    nodes_cpu = sum(_proc_cpu_s(p) for p in node_pids) - nodes0
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()  # our own child, by its handle
    records = [r for out, _ in results for r in out]
    latencies = [r[0] for r in records if not r[2]]
    return Run(latencies, [r[1] for r in records if not r[2]], sum(r[2] for r in records),
               time.perf_counter() - start, coordinator_cpu, nodes_cpu,
               sum(cpu for _, cpu in results))


# ------------------------------------------------------------------------------ summary


def summarise(workload: str, n_clients: int, rows_per_request: int, runs: list[Run]) -> dict:
    """Medians over repeats for rates; latency percentiles over every request of all repeats."""
    latencies_ms = np.array([x for r in runs for x in r.latencies_s]) * 1000
    n_ok = [len(r.latencies_s) for r in runs]
    rates = [n / r.wall_s for n, r in zip(n_ok, runs, strict=True)]
    total = max(sum(n_ok), 1)
    batch_rows = [x for r in runs for x in r.batch_rows]

    def pct(q: float) -> float:
        return float(np.percentile(latencies_ms, q)) if latencies_ms.size else float("nan")

    return {
        "workload": workload, "clients": n_clients, "rows_per_request": rows_per_request,
        "repeats": len(runs), "requests": sum(n_ok), "errors": sum(r.errors for r in runs),
        "requests_s": statistics.median(rates),
        "rows_s": statistics.median(rates) * rows_per_request,
        "rows_s_min": min(rates) * rows_per_request, "rows_s_max": max(rates) * rows_per_request,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_batch_rows": sum(batch_rows) / len(batch_rows) if batch_rows else 0.0,
        "coordinator_cpu_us_per_request": sum(r.coordinator_cpu_s for r in runs) / total * 1e6,
        "nodes_cpu_us_per_request": sum(r.nodes_cpu_s for r in runs) / total * 1e6,
        "clients_cpu_us_per_request": sum(r.clients_cpu_s for r in runs) / total * 1e6,
    }


def print_table(rows: list[dict]) -> None:
    header = (f"{'workload':<19} {'clients':>7} {'req/s':>8} {'rows/s':>10} {'rows/s range':>17} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'batch':>6} {'coord us/req':>12} "
              f"{'nodes us/req':>12} {'clients us/req':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        span = f"{r['rows_s_min']:,.0f}-{r['rows_s_max']:,.0f}"
        print(f"{r['workload']:<19} {r['clients']:>7} {r['requests_s']:>8,.0f} "
              f"{r['rows_s']:>10,.0f} {span:>17} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['mean_batch_rows']:>6.1f} "
              f"{r['coordinator_cpu_us_per_request']:>12.0f} "
              f"{r['nodes_cpu_us_per_request']:>12.0f} {r['clients_cpu_us_per_request']:>14.0f}")


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})


def plot(rows: list[dict], ceiling_rows_s: float, path: Path) -> None:
    """Rows/s and p99 latency against clients, one line per workload, the ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for workload in WORKLOADS:
        mine = [r for r in rows if r["workload"] == workload]
        if not mine:
            continue
        xs = [r["clients"] for r in mine]
        left.plot(xs, [r["rows_s"] for r in mine], marker="o", label=workload)
        right.plot(xs, [r["p99_ms"] for r in mine], marker="o", label=workload)
    left.axhline(ceiling_rows_s, linestyle="--", color="grey",
                 label="in-process forward pass (1,000 rows)")
    levels = sorted({r["clients"] for r in rows})
    for ax, ylabel in ((left, "rows per second"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels)
        ax.set_xticklabels([str(x) for x in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    left.set_title("Throughput")
    right.set_title("p99 latency")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- in process


def blas_line() -> str:
    """The BLAS numpy uses here and its threads (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return "none found"
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
                     f"{i.get('num_threads')} thread(s))" for i in blas)


def inproc_rows_s(servable, x: np.ndarray, rows_per_call: int, repeats: int = 5) -> float:
    """Rows per second of Servable.predict over x in calls of rows_per_call rows (best run)."""
    n_calls = max(len(x) // rows_per_call, 1)
    chunks = [x[i * rows_per_call:(i + 1) * rows_per_call] for i in range(n_calls)]
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for chunk in chunks:
            servable.predict(chunk)
        best = min(best, time.perf_counter() - began)
    return n_calls * rows_per_call / best


def train_model(coordinator: Address, workdir: Path, rounds: int) -> Path:
    """The demo's model, trained by the real client through the cluster."""
    model = workdir / "model.npz"
    argv = [sys.executable, "-m", "client", coordinator.host, str(coordinator.port), "letters",
            str(rounds), *DEMO_TRAINING[1:], "--timing", str(workdir / "timing.txt"),
            "--model-out", str(model)]
    print("training: python -m client HOST PORT " + " ".join(argv[5:]), flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
    if done.returncode != 0:
        raise click.ClickException("training failed: " + " ".join(done.stderr.split())[-400:])
    for line in done.stdout.splitlines():
        if line.startswith("final"):
            print(f"  {line}", flush=True)
    return model


# ------------------------------------------------------------------------------- goals


def verdict(name: str, value: float, op: str, goal: float, unit: str) -> bool:
    met = value >= goal if op == ">=" else value < goal
    print(f"goal {name} {op} {goal:g}{unit}: {value:.3g}{unit} -> {'met' if met else 'MISSED'}")
    return met


def at(rows: list[dict], workload: str, clients: int) -> dict | None:
    return next((r for r in rows if r["workload"] == workload and r["clients"] == clients), None)


# --------------------------------------------------------------------------------- CLI


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--nodes", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Compute nodes (shared by both coordinators).")
@click.option("--concurrency", "levels", type=ListType(click.IntRange(1, 256)),
              default="1,2,4,8,16,32,64", show_default=True,
              help="Concurrent clients per level, comma-separated.")
@click.option("--duration-s", type=FiniteRange(0.05, 60), default=1.5, show_default=True,
              help="Seconds each workload runs at each level, per repeat.")
@click.option("--repeats", type=click.IntRange(1, 20), default=2, show_default=True,
              help="Interleaved repeats of every level (medians and ranges reported).")
@click.option("--max-requests", type=click.IntRange(1, 10_000_000), default=100_000,
              show_default=True, help="Cap on requests per client per level.")
@click.option("--client-procs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Most client processes; each runs a share of the clients as threads.")
@click.option("--big-rows", type=click.IntRange(2, 100_000), default=1000, show_default=True,
              help="Rows per large request.")
@click.option("--batch-max-rows", type=click.IntRange(min=2), default=256, show_default=True,
              help="The batching coordinator's --batch-max-rows.")
@click.option("--batch-wait-s", type=FiniteRange(0, 1), default=0.002, show_default=True,
              help="The batching coordinator's --batch-wait-s.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Training rounds of the demo's model.")
@click.option("--quick", is_flag=True,
              help="A tiny run for tests: 1 node, 1 round, levels 1,8, 0.3 s, 1 repeat.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where serving.csv and serving.png go [a temporary directory].")
def cli(nodes: int, levels: list[int], duration_s: float, repeats: int, max_requests: int,
        client_procs: int, big_rows: int, batch_max_rows: int, batch_wait_s: float,
        rounds: int, quick: bool, out_dir: Path | None) -> None:
    require_module("matplotlib")  # before the work, not after it
    if quick:
        nodes, levels, duration_s, repeats, rounds = 1, [1, 8], 0.3, 1, 1
    levels = sorted(set(levels))
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cluster-", dir=out_dir))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {date.today().isoformat()}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; BLAS {blas_line()}")
    print(f"cluster: {nodes} node(s), two coordinators over them (round-robin): batching "
          f"(--batch-max-rows {batch_max_rows} --batch-wait-s {batch_wait_s:g}) and "
          f"--no-batching; clients in up to {client_procs} processes; {duration_s:g} s per "
          f"workload and level, {repeats} interleaved repeat(s)", flush=True)
    with LocalCluster(workdir) as cluster:
        for _ in range(nodes):
            cluster.add_node(0.0, "--load-delay-s", "0")
        batching = cluster.add_coordinator(
            "round-robin", "--batch-max-rows", str(batch_max_rows),
            "--batch-wait-s", repr(batch_wait_s), "--log-level", "warning")
        unbatched = cluster.add_coordinator("round-robin", "--no-batching",
                                            "--log-level", "warning")
        model = read_model_file(train_model(batching.address, workdir, rounds))
        rows, ceiling = measure(model, batching, unbatched, [n.pid for n in cluster.nodes],
                                levels, duration_s, repeats, max_requests, client_procs,
                                big_rows)
    write_csv(out_dir / "serving.csv", rows)
    plot(rows, ceiling["big"], out_dir / "serving.png")
    print()
    print_table(rows)
    print(f"in-process Servable.predict, one thread: {ceiling['big']:,.0f} rows/s in "
          f"{big_rows}-row calls, {ceiling['one']:,.0f} rows/s in 1-row calls")
    print("rows/s: median over repeats (range: min-max); latency percentiles over every "
          "request of all repeats; batch = mean rows in the batch a request rode in; "
          "us/req = CPU per request of the coordinator under load, the nodes, the clients")
    print(f"wrote {out_dir}/serving.csv and {out_dir}/serving.png")
    print(goals(rows, ceiling, levels, batch_wait_s))


def measure(model, batching, unbatched, node_pids: list[int], levels: list[int],
            duration_s: float, repeats: int, max_requests: int, client_procs: int,
            big_rows: int) -> tuple[list[dict], dict[str, float]]:
    """Every workload at every level, interleaved; the in-process ceiling."""
    import letters

    x = read_data_dir(letters.default_data_dir()).validate.x
    servable = model.servable
    for coordinator in (batching, unbatched):  # upload the model; check the answers' bits
        link = ServingLink([coordinator.address], deadline_s=60.0)
        try:
            labels = link.predict(model, x, chunk_rows=big_rows).labels
        except ServingFailed as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            link.close()
        if not np.array_equal(labels, servable.predict(x)):
            raise click.ClickException("the cluster's labels differ from the in-process ones")
    ceiling = {"big": inproc_rows_s(servable, x, big_rows),
               "one": inproc_rows_s(servable, x[:2000], 1)}
    max_clients = max(levels)
    singles = [PredictRequest(model=model.digest, rows=encode_tensor(x[i:i + 1]))
               for i in range(max_clients)]
    bigs = [PredictRequest(model=model.digest,
                           rows=encode_tensor(np.roll(x, -i * 7, axis=0)[:big_rows]))
            for i in range(max_clients)]
    plan = [(WORKLOADS[0], batching, singles, 1), (WORKLOADS[1], unbatched, singles, 1),
            (WORKLOADS[2], batching, bigs, big_rows)]
    runs: dict[tuple[str, int], list[Run]] = {}
    for repeat in range(repeats):
        for n in levels:
            for workload, server, requests, _ in plan:
                run = run_level(server.address, requests[:n], n, client_procs, duration_s,
                                max_requests, server.pid, node_pids)
                runs.setdefault((workload, n), []).append(run)
            print(f"repeat {repeat + 1}/{repeats}: {n} client(s) done", flush=True)
    rows = [summarise(w, n, per, runs[(w, n)]) for w, _, _, per in plan for n in levels]
    return rows, ceiling


def goals(rows: list[dict], ceiling: dict[str, float], levels: list[int],
          batch_wait_s: float) -> str:
    """Verdict lines; the key=value line."""
    level = 32 if 32 in levels else max(levels)
    on, off = at(rows, WORKLOADS[0], level), at(rows, WORKLOADS[1], level)
    assert on is not None and off is not None
    ratio = on["rows_s"] / off["rows_s"] if off["rows_s"] else float("inf")
    big = max((r for r in rows if r["workload"] == WORKLOADS[2]), key=lambda r: r["rows_s"])
    share = big["rows_s"] / ceiling["big"]
    light = at(rows, WORKLOADS[0], min(levels))
    assert light is not None
    limit_ms = batch_wait_s * 1000 + 5
    met = [
        verdict(f"batching vs no batching, {level} single-row clients (rows/s)", ratio, ">=",
                3, "x"),
        verdict(f"1000-row requests vs in-process rows/s (best level: {big['clients']} "
                "clients)", share, ">=", 1 / 3, "x"),
        verdict(f"p99 with {min(levels)} client, batched single rows (max wait + 5 ms)",
                light["p99_ms"], "<", limit_ms, " ms"),
    ]
    return " ".join([
        f"batching_ratio={ratio:.2f}", f"big_vs_inprocess={share:.3f}",
        f"light_p99_ms={light['p99_ms']:.2f}",
        f"single_batched_rows_s={on['rows_s']:.0f}", f"single_unbatched_rows_s={off['rows_s']:.0f}",
        f"big_rows_s={big['rows_s']:.0f}", f"inprocess_rows_s={ceiling['big']:.0f}",
        f"goals_met={sum(met)}/{len(met)}",
    ])


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_serving.py", argv)


if __name__ == "__main__":
    main()
