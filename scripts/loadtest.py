"""Load-test a cluster: concurrent clients at rising concurrency, then CSV, plots, report.

    .venv/bin/python scripts/loadtest.py --local 2 --concurrency 1,2,4,8 --requests 40 \\
        --out loadtest --label nodes2
    .venv/bin/python scripts/loadtest.py --coordinator 127.0.0.1:9090 --duration 10 ...
    .venv/bin/python scripts/loadtest.py --out loadtest --compare nodes1,nodes2,nodes4

A virtual client is a thread with its own connections. Each of its requests is, with
probability --status-share, a status() call, and otherwise what --workload says: `train`,
a small training round (RoundRequest over Thrift: tiny weights, --shards shards of
--shard-rows rows); `predict`, a predict() of --predict-rows letters rows with a model of
h = --hidden (random weights, uploaded once with put_model: serving costs the same for any
weights); `mix`, either of the two with even odds. A level runs
--concurrency clients until --requests requests were issued or --duration seconds
passed (both bound every level; --max-requests caps duration runs). Everything goes
to --out DIR/LABEL/: raw.csv (every request), summary.csv (per level and kind),
throughput.png, latency_p95.png, error_rate.png, run.json and report.md.
--compare reads earlier runs' summary.csv and run.json and writes one report for all.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import platform
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import click
import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_cluster import POLICY_CHOICE, LocalCluster  # noqa: E402
from machine import cpu_model  # noqa: E402
from timing_analysis import percentile  # noqa: E402

from client.coordinator_link import CoordinatorLink  # noqa: E402
from idl.gen import Coordinator  # noqa: E402
from idl.gen.ttypes import PredictRequest, RoundRequest, ShardRef, TrainConfig  # noqa: E402
from idl.rpc import Address, ConnectionPool  # noqa: E402
from idl.tensors import encode_tensor, encode_tensors  # noqa: E402
from runtime.cli import (  # noqa: E402
    AddressType,
    FiniteRange,
    RenamedOption,
    require_module,
    run_cli,
)
from runtime.events import configure_logging  # noqa: E402

RAW_COLUMNS = ("level", "client", "seq", "kind", "start_s", "end_s", "latency_s", "ok", "error")
SUMMARY_COLUMNS = ("level", "kind", "requests", "ok", "errors", "error_rate", "wall_s",
                   "throughput_rps", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms",
                   "latency_p99_ms")
KINDS = ("all", "train", "predict", "status")
WORKLOADS = ("train", "predict", "mix")
PACKAGES = ("fedcluster", "numpy", "thrift", "click", "matplotlib", "prometheus-client", "tqdm")
STATUS_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Workload:
    """What one virtual client sends: a round on small shards, or a status() call."""

    shards: int = 2
    shard_rows: int = 50
    hidden: int = 4
    epochs: int = 1
    eta: float = 1e-4
    status_share: float = 0.2
    deadline_s: float = 30.0
    seed: int = 1
    kind: str = "train"  # train, predict or mix (see WORKLOADS)
    predict_rows: int = 1

    def draw(self, rng: random.Random) -> str:
        """The kind of the next request: status, train or predict."""
        if rng.random() < self.status_share:
            return "status"
        if self.kind == "mix":
            return "train" if rng.random() < 0.5 else "predict"
        return self.kind


@dataclass
class Record:
    """One request as the client saw it; times in seconds since the run started."""

    level: int
    client: int
    seq: int
    kind: str
    start_s: float
    end_s: float
    latency_s: float
    ok: int
    error: str


# ---------------------------------------------------------------------------- workload


def write_shards(workload: Workload, directory: Path) -> tuple[list[ShardRef], dict[str, Path]]:
    """The first shard_rows rows of the default letters shards, as files; refs and paths."""
    import letters

    sources = sorted(letters.default_data_dir().glob("train_*.txt"))
    directory.mkdir(parents=True, exist_ok=True)
    refs, paths = [], {}
    for i in range(workload.shards):
        lines = sources[i % len(sources)].read_text().splitlines()[: workload.shard_rows]
        data = ("\n".join(lines) + "\n").encode()
        path = directory / f"train_{i + 1}.txt"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        refs.append(ShardRef(name=path.name, digest=digest, n_rows=len(lines), n_bytes=len(data)))
        paths[digest] = path
    return refs, paths


@functools.lru_cache(maxsize=4)
def _weights(hidden: int, seed: int) -> list:
    """Encoded initial weights, made once: requests share them read-only."""
    from mlcore.model import init_params

    return encode_tensors(init_params(16, hidden, 26, seed).tensors())


@dataclass(frozen=True)
class ServedModel:
    """The model predict requests name, and the rows they send (letters validation rows)."""

    digest: str
    data: bytes
    rows: np.ndarray


def served_model(workload: Workload, directory: Path) -> ServedModel:
    """A d=16 -> h -> 26 model file (seeded random weights), written once; its rows."""
    import letters
    from mlcore.data import read_data_dir
    from mlcore.model import init_params
    from mlcore.servable import Servable, save_servable

    path = directory / "model.npz"
    directory.mkdir(parents=True, exist_ok=True)
    params = init_params(16, workload.hidden, 26, workload.seed, scheme="he")
    save_servable(path, Servable((params,)))
    data = path.read_bytes()
    rows = read_data_dir(letters.default_data_dir()).validate.x
    return ServedModel(hashlib.sha256(data).hexdigest(), data, rows)


def predict_request(workload: Workload, model: ServedModel, client: int, seq: int,
                    token: str) -> PredictRequest:
    """predict_rows rows starting at a row that moves with the client and the request."""
    start = (client * 997 + seq * workload.predict_rows) % len(model.rows)
    rows = np.take(model.rows, range(start, start + workload.predict_rows), axis=0, mode="wrap")
    return PredictRequest(model=model.digest, rows=encode_tensor(rows),
                          deadline_s=min(workload.deadline_s, 86400.0), token=token)


def round_request(workload: Workload, refs: list[ShardRef], job_id: str, seq: int,
                  token: str) -> RoundRequest:
    return RoundRequest(
        job_id=job_id, round=seq + 1, weights=_weights(workload.hidden, workload.seed),
        shards=refs,
        config=TrainConfig(epochs=workload.epochs, eta=workload.eta, seed=workload.seed),
        deadline_s=workload.deadline_s, token=token,
    )


# ------------------------------------------------------------------------------ driver


@dataclass
class Level:
    """One concurrency level's bounds, shared by its clients."""

    concurrency: int
    max_requests: int
    stop_at: float | None  # perf_counter time; None: count-bounded only
    issued: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def take(self) -> int | None:
        """The next request number, or None when the level's count or time is used up."""
        with self.lock:
            if self.issued >= self.max_requests:
                return None
            if self.stop_at is not None and time.perf_counter() >= self.stop_at:
                return None
            self.issued += 1
            return self.issued - 1


def run_client(level: Level, client: int, address: Address, workload: Workload,
               refs: list[ShardRef], paths: dict[str, Path], model: ServedModel | None,
               t0: float, token: str, out: list[Record]) -> None:
    """One virtual client: requests until the level says stop; every outcome recorded."""
    rng = random.Random(workload.seed * 1000 + level.concurrency * 100 + client)
    link = CoordinatorLink([address], paths)
    pool = ConnectionPool(Coordinator.Client, max_idle=1)
    try:
        while (seq := level.take()) is not None:
            kind = workload.draw(rng)
            began = time.perf_counter()
            error = ""
            try:
                if kind == "train":
                    job = f"load-c{level.concurrency}-{client}"
                    link.run_round(round_request(workload, refs, job, seq, token))
                elif kind == "predict":
                    assert model is not None
                    request = predict_request(workload, model, client, seq, token)
                    pool.call(address, workload.deadline_s + STATUS_TIMEOUT_S,
                              lambda c, r=request: c.predict(r))
                else:
                    pool.call(address, STATUS_TIMEOUT_S, lambda c: c.status(token))
            except Exception as exc:  # every failure is data here, never a crash
                error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
                pool.discard(address)
            ended = time.perf_counter()
            out.append(Record(level.concurrency, client, seq, kind, round(began - t0, 6),
                              round(ended - t0, 6), round(ended - began, 6), int(not error),
                              error))
    finally:
        link.close()
        pool.close()


def run_level(concurrency: int, requests: int, duration_s: float | None, address: Address,
              workload: Workload, refs: list[ShardRef], paths: dict[str, Path],
              model: ServedModel | None, t0: float, token: str,
              level_timeout_s: float) -> list[Record]:
    """Run one level to its bound (count, or time); clients still busy past the level's
    timeout plus one request deadline are abandoned, and their requests go unrecorded."""
    limit_s = min(duration_s, level_timeout_s) if duration_s else level_timeout_s
    level = Level(concurrency, requests, time.perf_counter() + limit_s)
    records: list[Record] = []
    threads = [threading.Thread(target=run_client, daemon=True, name=f"client-{i}",
                                args=(level, i, address, workload, refs, paths, model, t0,
                                      token, records))
               for i in range(concurrency)]
    for t in threads:
        t.start()
    join_by = time.perf_counter() + limit_s + workload.deadline_s + 15
    for t in threads:
        t.join(timeout=max(join_by - time.perf_counter(), 0.1))
    return sorted(records, key=lambda r: (r.start_s, r.client))


# ----------------------------------------------------------------------------- summary


def summarise(records: list[Record]) -> list[dict[str, str]]:
    """Per level and kind: counts, error rate, throughput of ok requests, latency of ok ones.

    A level's wall time runs from its first request's start to its last one's end; every
    kind of that level is divided by the same wall time, so train + predict + status = all.
    Kinds the run never sends get no rows.
    """
    rows = []
    sent = {r.kind for r in records}
    kinds = [k for k in KINDS if k == "all" or k in sent]
    for level in sorted({r.level for r in records}):
        at_level = [r for r in records if r.level == level]
        wall_s = max(r.end_s for r in at_level) - min(r.start_s for r in at_level)
        for kind in kinds:
            chosen = [r for r in at_level if kind in ("all", r.kind)]
            ok_ms = [r.latency_s * 1000 for r in chosen if r.ok]
            n, n_ok = len(chosen), len(ok_ms)
            rows.append({
                "level": str(level), "kind": kind, "requests": str(n), "ok": str(n_ok),
                "errors": str(n - n_ok), "error_rate": f"{(n - n_ok) / n if n else 0.0:.4f}",
                "wall_s": f"{wall_s:.3f}",
                "throughput_rps": f"{n_ok / wall_s if wall_s > 0 else 0.0:.3f}",
                "latency_mean_ms": f"{sum(ok_ms) / n_ok:.3f}" if n_ok else "nan",
                "latency_p50_ms": f"{percentile(ok_ms, 50):.3f}",
                "latency_p95_ms": f"{percentile(ok_ms, 95):.3f}",
                "latency_p99_ms": f"{percentile(ok_ms, 99):.3f}",
            })
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------- environment


def environment(address: Address, token: str = "") -> dict[str, object]:
    """The machine, the software and the cluster this run measured."""
    cpu = cpu_model()
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    pool = ConnectionPool(Coordinator.Client, max_idle=1)
    try:
        status = pool.call(address, STATUS_TIMEOUT_S, lambda c: c.status(token))
    finally:
        pool.close()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": memory, "os": platform.platform(),
        "python": platform.python_version(), "packages": versions,
        "coordinator": str(address), "policy": status.policy,
        "nodes": len(status.nodes or []), "nodes_alive": sum(1 for n in status.nodes if n.alive),
    }


# ------------------------------------------------------------------------------ output


def _plot(series: dict[str, list[tuple[int, float]]], ylabel: str, title: str, out: Path,
          legend: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    levels: set[int] = set()
    for name, points in series.items():
        points = [(x, y) for x, y in points if y == y]  # drop NaN (no ok requests)
        levels |= {x for x, _ in points}
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(levels))
    ax.set_xticklabels([str(x) for x in sorted(levels)])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title=legend)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


FIGURES = (
    ("throughput.png", "throughput_rps", 1.0, "successful requests per second",
     "Throughput vs concurrency"),
    ("latency_p95.png", "latency_p95_ms", 1.0, "p95 latency (ms, successful requests)",
     "p95 latency vs concurrency"),
    ("error_rate.png", "error_rate", 100.0, "error rate (% of requests)",
     "Error rate vs concurrency"),
)


def plot_run(summary: list[dict[str, str]], out_dir: Path) -> None:
    kinds = [k for k in KINDS if any(r["kind"] == k for r in summary)]
    for filename, column, scale, ylabel, title in FIGURES:
        series = {kind: [(int(r["level"]), float(r[column]) * scale)
                         for r in summary if r["kind"] == kind] for kind in kinds}
        _plot(series, ylabel, title, out_dir / filename, "request kind")


def plot_compare(runs: dict[str, list[dict[str, str]]], out_dir: Path, kind: str) -> None:
    for filename, column, scale, ylabel, title in FIGURES:
        series = {label: [(int(r["level"]), float(r[column]) * scale)
                          for r in rows if r["kind"] == kind] for label, rows in runs.items()}
        _plot(series, ylabel, f"{title} ({kind} requests)", out_dir / filename, "run")


def results_table(rows: list[dict[str, str]], label_column: str | None = None) -> list[str]:
    """The summary rows as a markdown table, cells exactly as in summary.csv."""
    columns = ((label_column,) if label_column else ()) + SUMMARY_COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    return lines


def environment_lines(env: dict) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return [
        "| item | value |", "|---|---|",
        f"| CPU | {env['cpu']} |", f"| cores | {env['cores']} |",
        f"| memory | {env['memory']} |", f"| OS | {env['os']} |",
        f"| Python | {env['python']} |", f"| packages | {packages} |",
        f"| coordinator | {env['coordinator']} (policy {env['policy']}) |",
        f"| compute nodes | {env['nodes']} ({env['nodes_alive']} alive at start) |",
    ]


def workload_lines(run: dict) -> list[str]:
    w = run["workload"]
    bound = (f"{run['duration_s']:g} s per level (at most {run['requests']} requests)"
             if run["duration_s"] else f"{run['requests']} requests per level")
    train = (f"one training round (`run_round`) over {w['shards']} shards of "
             f"{w['shard_rows']} rows (letters, 16 attributes, 26 classes), h = {w['hidden']}, "
             f"{w['epochs']} epoch(s), eta {w['eta']:g}")
    predict = (f"one `predict()` of {w.get('predict_rows', 1)} letters row(s) with a "
               f"16 -> {w['hidden']} -> 26 model")
    kind = w.get("kind", "train")
    other = {"train": train, "predict": predict,
             "mix": f"with even odds {train}, or {predict}"}[kind]
    return [
        f"- concurrency levels: {', '.join(map(str, run['levels']))} virtual clients; {bound}",
        f"- each request (workload `{kind}`): with probability {w['status_share']:g} a "
        f"`status()` call, otherwise {other}; deadline {w['deadline_s']:g} s",
        "- latency: client-side wall time of one call; percentiles over successful requests; "
        "throughput: successful requests / level wall time (first start to last end)",
    ]


def write_report(out_dir: Path, run: dict, summary: list[dict[str, str]]) -> None:
    lines = [f"# Load test: {run['label']}", "",
             f"Run {run['started']} (UTC). Command: `{run['command']}`", "",
             "## Environment", "", *environment_lines(run["environment"]), "",
             "## Workload", "", *workload_lines(run), "",
             "## Results", "", *results_table(summary), "",
             "![throughput](throughput.png)", "", "![p95 latency](latency_p95.png)", "",
             "![error rate](error_rate.png)", "",
             "Raw requests: `raw.csv`; this table: `summary.csv`.", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


def write_compare_report(out_dir: Path, runs: dict[str, dict],
                         summaries: dict[str, list[dict[str, str]]], kind: str) -> None:
    lines = [f"# Load test comparison: {', '.join(runs)}", "",
             f"Throughput, p95 latency and error rate of **{kind}** requests per run "
             "(tables: every kind).", "",
             "![throughput](throughput.png)", "", "![p95 latency](latency_p95.png)", "",
             "![error rate](error_rate.png)", ""]
    for label, run in runs.items():
        lines += [f"## {label}", "", f"Command: `{run['command']}`", "",
                  *environment_lines(run["environment"]), "", *workload_lines(run), "",
                  *results_table(summaries[label]), ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------- CLI


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not levels or any(n < 1 or n > 1024 for n in levels):
        raise click.BadParameter("each level must be between 1 and 1024 clients")
    return sorted(set(levels))


def compare(out_dir: Path, labels: list[str], kind: str) -> Path:
    """One report and plots for earlier runs DIR/<label>/; returns the report's path."""
    runs, summaries = {}, {}
    for label in labels:
        run_dir = out_dir / label
        if not (run_dir / "summary.csv").exists() or not (run_dir / "run.json").exists():
            raise click.ClickException(f"{run_dir}: no summary.csv/run.json; run "
                                       f"loadtest.py --label {label} --out {out_dir} first")
        runs[label] = json.loads((run_dir / "run.json").read_text())
        summaries[label] = read_csv(run_dir / "summary.csv")
    target = out_dir / ("compare_" + "_".join(labels))
    target.mkdir(parents=True, exist_ok=True)
    plot_compare(summaries, target, kind)
    write_compare_report(target, runs, summaries, kind)
    return target / "report.md"


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--coordinator", type=AddressType(), default=None,
              help="A running coordinator to load.")
@click.option("--local", "local_nodes", type=click.IntRange(1, 32), default=None,
              help="Start a local cluster with this many nodes on loopback instead.")
@click.option("--concurrency", "levels", default="1,2,4,8", show_default=True,
              callback=_levels, help="Concurrency levels (virtual clients), comma-separated.")
@click.option("--requests", type=click.IntRange(1, 1_000_000), default=None,
              help="Requests per level [20 unless --duration-s is given].")
@click.option("--duration-s", "--duration", "duration_s", cls=RenamedOption,
              type=FiniteRange(0, 3600, min_open=True),
              default=None, help="Seconds per level (requests then cap at --max-requests).")
@click.option("--max-requests", type=click.IntRange(1, 1_000_000), default=10_000,
              show_default=True, help="Cap on requests per level in --duration-s mode.")
@click.option("--level-timeout-s", "--level-timeout", "level_timeout_s", cls=RenamedOption,
              type=FiniteRange(1, 86400),
              default=300.0, show_default=True, help="Longest a level may run.")
@click.option("--workload", "workload_kind", type=click.Choice(WORKLOADS), default="train",
              show_default=True,
              help="What the non-status requests are: training rounds, predictions, or both.")
@click.option("--predict-rows", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Rows per predict request.")
@click.option("--status-share", type=FiniteRange(0, 1), default=0.2, show_default=True,
              help="Share of requests that are status() calls.")
@click.option("--shards", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Shards per training round.")
@click.option("--shard-rows", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Rows per shard.")
@click.option("--hidden", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--deadline-s", "--deadline", "deadline_s", cls=RenamedOption,
              type=FiniteRange(0.1, 3600), default=30.0,
              show_default=True, help="Deadline of each training round, seconds.")
@click.option("--policy", type=POLICY_CHOICE, default="round-robin", show_default=True,
              help="Policy of the --local coordinator.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--token", default="", envvar="FEDCLUSTER_TOKEN", help="Cluster token, if any.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Results go to OUT/LABEL/ (comparisons to OUT/compare_*).")
@click.option("--label", default=None, help="Name of this run [nodesN with --local, else run].")
@click.option("--compare", "compare_labels", default=None,
              help="Only compare earlier runs OUT/label1,OUT/label2,... in one report.")
@click.option("--compare-kind", type=click.Choice(KINDS), default="train", show_default=True,
              help="Request kind plotted in a comparison.")
def cli(coordinator: Address | None, local_nodes: int | None, levels: list[int],
        requests: int | None, duration_s: float | None, max_requests: int,
        level_timeout_s: float, workload_kind: str, predict_rows: int, status_share: float,
        shards: int, shard_rows: int,
        hidden: int, epochs: int, deadline_s: float, policy: str, seed: int, token: str,
        out_dir: Path, label: str | None, compare_labels: str | None,
        compare_kind: str) -> None:
    """Drive a cluster with concurrent clients; write raw and summary CSV, plots, a report."""
    require_module("matplotlib")  # before the load, not after it
    configure_logging("WARNING", component="loadtest")
    logging.getLogger("thrift").setLevel(logging.CRITICAL)  # failures are recorded as data
    if compare_labels:
        labels = [x.strip() for x in compare_labels.split(",") if x.strip()]
        report = compare(out_dir, labels, compare_kind)
        click.echo(f"comparison of {', '.join(labels)}: {report}")
        return
    if (coordinator is None) == (local_nodes is None):
        raise click.UsageError("give exactly one of --coordinator HOST:PORT or --local N")
    label = label or (f"nodes{local_nodes}" if local_nodes else "run")
    if not label.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise click.BadParameter("use letters, digits, - _ . only", param_hint="--label")
    bound = requests or (max_requests if duration_s else 20)
    workload = Workload(shards, shard_rows, hidden, epochs, status_share=status_share,
                        deadline_s=deadline_s, seed=seed, kind=workload_kind,
                        predict_rows=predict_rows)
    run_dir = out_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    with ClusterUnderTest(coordinator, local_nodes, policy, run_dir) as address:
        records, env = drive(address, levels, bound, duration_s, workload, run_dir, token,
                             level_timeout_s)
    summary = summarise(records)
    write_csv(run_dir / "raw.csv", RAW_COLUMNS, [asdict(r) for r in records])
    write_csv(run_dir / "summary.csv", SUMMARY_COLUMNS, summary)
    run = {"label": label, "started": dt.datetime.now(dt.timezone.utc).strftime(
               "%Y-%m-%d %H:%M:%S"),
           "command": " ".join(["python scripts/loadtest.py", *sys.argv[1:]]),
           "levels": levels, "requests": bound, "duration_s": duration_s,
           "workload": asdict(workload), "environment": env}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    plot_run(summary, run_dir)
    write_report(run_dir, run, summary)
    click.echo("\n".join(results_table(summary)))
    click.echo(f"\nwrote {run_dir}/: raw.csv summary.csv throughput.png latency_p95.png "
               "error_rate.png run.json report.md")


class ClusterUnderTest:
    """The coordinator to load: the one given, or a local cluster stopped afterwards."""

    def __init__(self, address: Address | None, n_nodes: int | None, policy: str,
                 run_dir: Path) -> None:
        self._address, self._n, self._policy, self._run_dir = address, n_nodes, policy, run_dir
        self._local: LocalCluster | None = None

    def __enter__(self) -> Address:
        if self._address is not None:
            return self._address
        self._local = LocalCluster(Path(tempfile.mkdtemp(prefix="loadtest-", dir=self._run_dir)))
        try:
            for _ in range(self._n or 0):
                self._local.add_node(0.0, "--load-delay-s", "0")
            return self._local.add_coordinator(self._policy).address
        except (RuntimeError, TimeoutError) as exc:
            self._local.stop()
            raise click.ClickException(f"could not start the local cluster: {exc}") from None

    def __exit__(self, *exc_info: object) -> None:
        if self._local is not None:
            self._local.stop()


def drive(address: Address, levels: list[int], requests: int, duration_s: float | None,
          workload: Workload, run_dir: Path, token: str,
          level_timeout_s: float) -> tuple[list[Record], dict]:
    """Upload the shards (and the model) once, then run every level in turn; records and
    environment."""
    refs, paths = write_shards(workload, run_dir / "workload")
    model = served_model(workload, run_dir / "workload") if workload.kind != "train" else None
    link = CoordinatorLink([address], paths)
    try:
        env = environment(address, token)
        link.upload_missing(address, token)
        if model is not None:
            upload_model(address, model, token)
    except Exception as exc:
        raise click.ClickException(f"cannot use the coordinator at {address}: {exc}") from None
    finally:
        link.close()
    t0 = time.perf_counter()
    records: list[Record] = []
    for n in levels:
        level_records = run_level(n, requests, duration_s, address, workload, refs, paths,
                                  model, t0, token, level_timeout_s)
        n_ok = sum(r.ok for r in level_records)
        click.echo(f"level {n:>4}: {len(level_records)} requests, {n_ok} ok", err=True)
        records += level_records
    return records, env


def upload_model(address: Address, model: ServedModel, token: str) -> None:
    """put_model unless the coordinator holds the model already."""
    pool = ConnectionPool(Coordinator.Client, max_idle=1)
    try:
        missing = pool.call(address, STATUS_TIMEOUT_S,
                            lambda c: c.missing_models([model.digest], token))
        if model.digest in (missing or []):
            pool.call(address, STATUS_TIMEOUT_S,
                      lambda c: c.put_model(model.data, "loadtest-model.npz", token))
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "loadtest.py", argv)


if __name__ == "__main__":
    main()
