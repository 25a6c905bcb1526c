"""Load-test a cluster: concurrent clients at rising concurrency, then CSV, plots, report.

    .venv/bin/python scripts/loadtest.py --local 2 --concurrency 1,2,4,8 --requests 40 \\
        --out loadtest --label nodes2
    .venv/bin/python scripts/loadtest.py --coordinator 127.0.0.1:9090 --duration 10 ...
    .venv/bin/python scripts/loadtest.py --out loadtest --compare nodes1,nodes2,nodes4
    .venv/bin/python scripts/loadtest.py --local 2 --workload http --concurrency 1,4,16 \\
        --duration-s 5 --out loadtest
    .venv/bin/python scripts/loadtest.py --gateway http://127.0.0.1:8080 --workload http ...

A virtual client is a thread with its own connections. Each of its requests is, with
probability --status-share, a status() call, and otherwise what --workload says: `train`,
a small training round (RoundRequest over Thrift: tiny weights, --shards shards of
--shard-rows rows); `predict`, a predict() of --predict-rows letters rows with a model of
h = --hidden (random weights, uploaded once with put_model: serving costs the same for any
weights); `mix`, either of the two with even odds.

`http` loads the gateway (`python -m gateway`) instead: started over --local N nodes or over
--coordinator, or a running one given with --gateway URL. Every virtual client is a user of
its own, registered and logged in once before the first level; its requests are then, by
the weights of --http-mix, job submissions (POST /v1/jobs: --dataset, --rounds, --epochs,
h = --hidden, eta 1e-4), reads of one of its jobs (GET /v1/jobs/{id}) and leaderboard reads
(GET /v1/leaderboard?dataset=...), and its status calls are GET /v1/status. A gateway the
script starts gets its per-user limits raised (--rate-per-s, --max-queued-per-user, the
login rate, --max-connections), so the run measures throughput rather than the limiter;
answers 429 (declined) are errors of their own status all the same.

A level runs --concurrency clients until --requests requests were issued or --duration
seconds passed (both bound every level; --max-requests caps duration runs). Everything
goes to --out DIR/LABEL/: raw.csv (every request), summary.csv (per level and kind),
errors.csv (failed requests per level, kind and status), throughput.png, latency_p95.png,
error_rate.png, run.json and report.md. --compare reads earlier runs' summary.csv and
run.json and writes one report for all. Every process the script starts is stopped by
PID when it ends, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import platform
import random
import secrets
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

if TYPE_CHECKING:
    import httpx

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_cluster import POLICY_CHOICE, LocalCluster, ServerProcess, start_gateway  # noqa: E402
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
    ListType,
    RenamedOption,
    require_module,
    run_cli,
)
from runtime.events import configure_logging  # noqa: E402

RAW_COLUMNS = ("level", "client", "seq", "kind", "start_s", "end_s", "latency_s", "ok", "error")
SUMMARY_COLUMNS = ("level", "kind", "requests", "ok", "errors", "error_rate", "wall_s",
                   "throughput_rps", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms",
                   "latency_p99_ms")
ERROR_COLUMNS = ("level", "kind", "status", "count")
KINDS = ("all", "train", "predict", "submit", "job", "leaderboard", "status")
HTTP_KINDS = ("submit", "job", "leaderboard")  # what --http-mix weighs, in its order
WORKLOADS = ("train", "predict", "mix", "http")
PACKAGES = ("fedcluster", "numpy", "thrift", "click", "matplotlib", "prometheus-client", "tqdm",
            "fastapi", "uvicorn", "httpx")
STATUS_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 120.0  # registering and logging in every user, or cancelling leftover jobs
RECENT_JOBS = 20  # a job read names one of the user's last this many jobs


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
    kind: str = "train"  # train, predict, mix or http (see WORKLOADS)
    predict_rows: int = 1
    http_mix: tuple[float, ...] = (1.0, 2.0, 1.0)  # weights of HTTP_KINDS
    dataset: str = "letters"  # http: the jobs' dataset, and the leaderboard read
    rounds: int = 1  # http: rounds per submitted job

    def draw(self, rng: random.Random) -> str:
        """The kind of the next request: status, train, predict, submit, job or leaderboard."""
        if rng.random() < self.status_share:
            return "status"
        if self.kind == "mix":
            return "train" if rng.random() < 0.5 else "predict"
        if self.kind == "http":
            return rng.choices(HTTP_KINDS, weights=self.http_mix)[0]
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


ClientLoop = Callable[[Level, int, list[Record]], None]  # (level, client, records)


def run_level(concurrency: int, requests: int, duration_s: float | None, client: ClientLoop,
              workload: Workload, level_timeout_s: float) -> list[Record]:
    """Run one level to its bound (count, or time); clients still busy past the level's
    timeout plus one request deadline are abandoned, and their requests go unrecorded."""
    limit_s = min(duration_s, level_timeout_s) if duration_s else level_timeout_s
    level = Level(concurrency, requests, time.perf_counter() + limit_s)
    records: list[Record] = []
    threads = [threading.Thread(target=client, daemon=True, name=f"client-{i}",
                                args=(level, i, records))
               for i in range(concurrency)]
    for t in threads:
        t.start()
    join_by = time.perf_counter() + limit_s + workload.deadline_s + 15
    for t in threads:
        t.join(timeout=max(join_by - time.perf_counter(), 0.1))
    return sorted(records, key=lambda r: (r.start_s, r.client))


# -------------------------------------------------------------------------- http workload


class SetupFailed(Exception):
    """The gateway answered a setup call (register, log in, ...) with an unexpected status."""


@dataclass
class HttpUser:
    """One virtual client's account on the gateway: logged in once; the jobs it submitted."""

    username: str
    token: str = field(repr=False)
    jobs: list[int] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One context for every client: making one per client costs ~15 ms of CPU each (the
    CA bundle is parsed again), which 64 clients would spend at the start of their level."""
    return ssl.create_default_context()


def http_client(base_url: str, workload: Workload, token: str = "") -> httpx.Client:
    """One keep-alive connection to the gateway, every wait bounded; proxies never used."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=base_url, headers=headers, trust_env=False, verify=_tls_context(),
        timeout=httpx.Timeout(workload.deadline_s, connect=min(workload.deadline_s, 10.0)),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def http_error(response: httpx.Response) -> str:
    """`HTTP <status>: <the gateway's detail>`."""
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = response.text
    return f"HTTP {response.status_code}: {detail}"


def job_body(workload: Workload) -> dict[str, object]:
    """A tiny job, so that the cluster behind the gateway is not what is measured."""
    return {"dataset": workload.dataset, "rounds": workload.rounds, "epochs": workload.epochs,
            "h": workload.hidden, "eta": workload.eta, "seed": workload.seed}


def http_request(http: httpx.Client, kind: str, user: HttpUser, workload: Workload,
                 rng: random.Random) -> str:
    """Send one request of `kind`; "" when the answer is the one it should be, else what was
    wrong. A job read needs a job: the caller makes it a submission while there is none."""
    if kind == "submit":
        response = http.post("/v1/jobs", json=job_body(workload))
        if response.status_code != 201:
            return http_error(response)
        user.jobs.append(int(response.json()["id"]))
        return ""
    if kind == "job":
        job_id = rng.choice(user.jobs[-RECENT_JOBS:])
        response = http.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200 and response.json().get("id") != job_id:
            return f"BadAnswer: GET /v1/jobs/{job_id} answered another job"
    elif kind == "leaderboard":
        response = http.get("/v1/leaderboard", params={"dataset": workload.dataset})
        if response.status_code == 200 and not isinstance(response.json(), list):
            return "BadAnswer: the leaderboard is not a list"
    else:
        response = http.get("/v1/status")
        if response.status_code == 200 and "nodes" not in response.json():
            return "BadAnswer: the status has no nodes"
    return "" if response.status_code == 200 else http_error(response)


def run_http_client(level: Level, client: int, base_url: str, user: HttpUser,
                    workload: Workload, t0: float, out: list[Record]) -> None:
    """One virtual client of the gateway: the user's requests until the level says stop."""
    rng = random.Random(workload.seed * 1000 + level.concurrency * 100 + client)
    with http_client(base_url, workload, user.token) as http:
        while (seq := level.take()) is not None:
            kind = workload.draw(rng)
            if kind == "job" and not user.jobs:
                kind = "submit"
            began = time.perf_counter()
            try:
                error = http_request(http, kind, user, workload, rng)
            except Exception as exc:  # every failure is data here, never a crash
                error = f"{type(exc).__name__}: {exc}"
            ended = time.perf_counter()
            out.append(Record(level.concurrency, client, seq, kind, round(began - t0, 6),
                              round(ended - t0, 6), round(ended - began, 6), int(not error),
                              error.replace("\n", " ")[:200]))


def patient(http: httpx.Client, method: str, path: str, expect: tuple[int, ...],
            deadline: float, **kwargs: object) -> httpx.Response:
    """A setup call: waits out a 429 as its Retry-After says (until `deadline`, monotonic);
    SetupFailed on any other unexpected status."""
    while True:
        response = http.request(method, path, **kwargs)
        if response.status_code == 429:
            try:
                wait_s = min(max(float(response.headers.get("retry-after", "1")), 0.1), 60.0)
            except ValueError:  # an HTTP date: not what the gateway sends
                wait_s = 1.0
            if time.monotonic() + wait_s < deadline:
                time.sleep(wait_s)
                continue
        if response.status_code not in expect:
            raise SetupFailed(f"{method} {path}: {http_error(response)}")
        return response


def sign_up(base_url: str, n_users: int, workload: Workload, deadline: float) -> list[HttpUser]:
    """Register and log in one user per virtual client (fresh names, random passwords)."""
    from concurrent.futures import ThreadPoolExecutor

    run_id = secrets.token_hex(4)

    def one(i: int) -> HttpUser:
        credentials = {"username": f"lt-{run_id}-{i}", "password": secrets.token_urlsafe(18)}
        with http_client(base_url, workload) as http:
            patient(http, "POST", "/v1/users", (201,), deadline, json=credentials)
            answer = patient(http, "POST", "/v1/tokens", (200,), deadline, json=credentials)
        return HttpUser(credentials["username"], answer.json()["token"])

    with ThreadPoolExecutor(max_workers=min(8, n_users), thread_name_prefix="sign-up") as pool:
        return list(pool.map(one, range(n_users)))


def http_environment(base_url: str, user: HttpUser, workload: Workload,
                     gateway_options: str) -> dict[str, object]:
    """The machine, the software, the gateway, and the cluster as the gateway sees it; ends
    the run early when the gateway does not offer the workload's dataset."""
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    with http_client(base_url, workload, user.token) as http:
        offered = patient(http, "GET", "/v1/datasets", (200,), deadline).json()
        names = [d["name"] for d in offered]
        if workload.dataset not in names:
            raise SetupFailed(f"it offers no dataset {workload.dataset!r} (it has: "
                              f"{', '.join(names) or 'none'}); see --dataset")
        status = patient(http, "GET", "/v1/status", (200, 503), deadline)
    env: dict[str, object] = {**machine_environment(), "gateway": base_url,
                              "gateway_options": gateway_options}
    if status.status_code != 200:
        return {**env, "coordinator": f"none answered ({http_error(status)})",
                "policy": "unknown", "nodes": 0, "nodes_alive": 0}
    cluster = status.json()
    nodes = cluster.get("nodes") or []
    return {**env, "coordinator": cluster.get("coordinator", "?"),
            "policy": cluster.get("policy", "?"), "nodes": len(nodes),
            "nodes_alive": sum(1 for n in nodes if n.get("alive"))}


def cancel_queued(base_url: str, users: list[HttpUser], workload: Workload) -> tuple[int, int]:
    """Cancel the run's jobs still queued on a gateway it did not start (bounded in time):
    (cancelled, left)."""
    from concurrent.futures import ThreadPoolExecutor

    deadline = time.monotonic() + SETUP_TIMEOUT_S

    def one(user: HttpUser) -> tuple[int, int]:
        cancelled, left = 0, 0
        with http_client(base_url, workload, user.token) as http:
            try:
                queued = [j["id"] for j in patient(
                    http, "GET", "/v1/jobs", (200,), deadline,
                    params={"state": "queued", "limit": 1000}).json()]
            except Exception:  # a leftover is reported, never fatal
                return 0, len(user.jobs)
            for job_id in queued:
                try:
                    patient(http, "DELETE", f"/v1/jobs/{job_id}", (200, 409), deadline)
                    cancelled += 1
                except Exception:
                    left += 1
        return cancelled, left

    with ThreadPoolExecutor(max_workers=min(8, max(len(users), 1))) as pool:
        done = list(pool.map(one, users))
    return sum(c for c, _ in done), sum(n for _, n in done)


def drive_http(base_url: str, levels: list[int], requests: int, duration_s: float | None,
               workload: Workload, level_timeout_s: float, gateway_options: str,
               cancel_leftovers: bool) -> tuple[list[Record], dict]:
    """Sign up one user per client of the largest level, then run every level; records and
    environment. With `cancel_leftovers` (a gateway the script did not start) the jobs the
    run left queued are cancelled afterwards, also when it fails or is interrupted."""
    import httpx

    users: list[HttpUser] = []
    try:
        try:
            users = sign_up(base_url, max(levels), workload,
                            time.monotonic() + SETUP_TIMEOUT_S)
            env = http_environment(base_url, users[0], workload, gateway_options)
        except (httpx.HTTPError, SetupFailed, ValueError, KeyError, TypeError) as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise click.ClickException(f"cannot use the gateway at {base_url}: "
                                       f"{message}") from None
        t0 = time.perf_counter()

        def client(level: Level, i: int, out: list[Record]) -> None:
            run_http_client(level, i, base_url, users[i], workload, t0, out)

        return run_levels(levels, requests, duration_s, client, workload, level_timeout_s), env
    finally:
        if cancel_leftovers and any(u.jobs for u in users):
            click.echo("cancelling the run's queued jobs on the gateway", err=True)
            cancelled, left = cancel_queued(base_url, users, workload)
            click.echo(f"cancelled {cancelled} queued jobs" +
                       (f"; {left} could not be cancelled" if left else ""), err=True)


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


def error_status(error: str) -> str:
    """What failed, without the details: `HTTP 429` for an HTTP answer, else the exception's
    name (the error column's text before its first colon)."""
    return error.split(":", 1)[0].strip() or "unknown"


def error_counts(records: list[Record]) -> list[dict[str, str]]:
    """Failed requests per level, kind and status (all kinds together as kind `all`), most
    frequent status first within each level and kind."""
    rows = []
    for level in sorted({r.level for r in records}):
        failed = [r for r in records if r.level == level and not r.ok]
        kinds = [k for k in KINDS if k == "all" or any(r.kind == k for r in failed)]
        for kind in kinds if failed else []:
            counts = Counter(error_status(r.error) for r in failed if kind in ("all", r.kind))
            rows += [{"level": str(level), "kind": kind, "status": status, "count": str(n)}
                     for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
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


def machine_environment() -> dict[str, object]:
    """The machine and the software this run measured on."""
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
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "os": platform.platform(),
            "python": platform.python_version(), "packages": versions}


def environment(address: Address, token: str = "") -> dict[str, object]:
    """The machine, the software and the cluster this run measured."""
    pool = ConnectionPool(Coordinator.Client, max_idle=1)
    try:
        status = pool.call(address, STATUS_TIMEOUT_S, lambda c: c.status(token))
    finally:
        pool.close()
    return {
        **machine_environment(),
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
    gateway = ([f"| gateway | {env['gateway']} ({env['gateway_options']}) |"]
               if "gateway" in env else [])
    return [
        "| item | value |", "|---|---|",
        f"| CPU | {env['cpu']} |", f"| cores | {env['cores']} |",
        f"| memory | {env['memory']} |", f"| OS | {env['os']} |",
        f"| Python | {env['python']} |", f"| packages | {packages} |", *gateway,
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
    levels = f"- concurrency levels: {', '.join(map(str, run['levels']))} virtual clients; {bound}"
    timing = ("- latency: client-side wall time of one call; percentiles over successful "
              "requests; throughput: successful requests / level wall time (first start to "
              "last end)")
    if kind == "http":
        mix = ":".join(f"{x:g}" for x in w["http_mix"])
        return [
            levels,
            "- each virtual client is a user of its own, registered and logged in once before "
            "the first level; it sends its requests over one keep-alive HTTP connection",
            f"- each request (workload `http`): with probability {w['status_share']:g} a "
            f"`GET /v1/status`, otherwise, with weights {mix}, a job submission (`POST "
            f"/v1/jobs`: dataset {w['dataset']}, {w['rounds']} round(s) of {w['epochs']} "
            f"epoch(s), h = {w['hidden']}, eta {w['eta']:g}), a job read (`GET /v1/jobs/ID` "
            f"of one of the user's last {RECENT_JOBS} jobs; a submission while it has none) "
            f"or a leaderboard read (`GET /v1/leaderboard?dataset={w['dataset']}`); "
            f"timeout {w['deadline_s']:g} s",
            timing,
        ]
    other = {"train": train, "predict": predict,
             "mix": f"with even odds {train}, or {predict}"}[kind]
    return [
        levels,
        f"- each request (workload `{kind}`): with probability {w['status_share']:g} a "
        f"`status()` call, otherwise {other}; deadline {w['deadline_s']:g} s",
        timing,
    ]


def errors_lines(errors: list[dict[str, str]]) -> list[str]:
    """The failed requests by status as a markdown table, cells exactly as in errors.csv."""
    if not errors:
        return ["No request failed."]
    lines = ["| " + " | ".join(ERROR_COLUMNS) + " |", "|" + "---|" * len(ERROR_COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in ERROR_COLUMNS) + " |" for r in errors]
    return lines


def write_report(out_dir: Path, run: dict, summary: list[dict[str, str]],
                 errors: list[dict[str, str]]) -> None:
    declined = ("`HTTP 429` is the gateway declining (its rate limit or its cap on queued "
                "jobs); every other status is a failure. " if run["workload"]["kind"] == "http"
                else "")
    lines = [f"# Load test: {run['label']}", "",
             f"Run {run['started']} (UTC). Command: `{run['command']}`", "",
             "## Environment", "", *environment_lines(run["environment"]), "",
             "## Workload", "", *workload_lines(run), "",
             "## Results", "", *results_table(summary), "",
             "![throughput](throughput.png)", "", "![p95 latency](latency_p95.png)", "",
             "![error rate](error_rate.png)", "",
             "## Errors by status", "",
             f"{declined}Status: the HTTP status, or the exception a call ended with.", "",
             *errors_lines(errors), "",
             "Raw requests: `raw.csv`; the tables: `summary.csv`, `errors.csv`.", ""]
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


def _http_mix(ctx: click.Context, param: click.Parameter,
              value: list[float]) -> tuple[float, ...]:
    if len(value) != len(HTTP_KINDS) or sum(value) <= 0:
        raise click.BadParameter("expected three weights SUBMIT,JOB,LEADERBOARD, not all 0")
    return tuple(value)


def _gateway_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """http(s)://HOST:PORT (a bare HOST:PORT means http), without a trailing slash."""
    if value is None:
        return None
    url = value if "://" in value else f"http://{value}"
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    if scheme not in ("http", "https") or not host or "/" in rest.rstrip("/") \
            or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected http://HOST:PORT, got {value!r}")
    return url.rstrip("/")


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
              help="A running coordinator to load (--workload http: to start the gateway "
                   "over).")
@click.option("--local", "local_nodes", type=click.IntRange(1, 32), default=None,
              help="Start a local cluster with this many nodes on loopback instead "
                   "(--workload http: and a gateway over it).")
@click.option("--gateway", "gateway_url", default=None, callback=_gateway_url,
              metavar="URL", help="A running gateway to load with --workload http "
                                  "(http://HOST:PORT), instead of starting one.")
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
              help="What the non-status requests are: training rounds, predictions, both, "
                   "or the gateway's HTTP API (see --http-mix).")
@click.option("--predict-rows", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Rows per predict request.")
@click.option("--status-share", type=FiniteRange(0, 1), default=0.2, show_default=True,
              help="Share of requests that are status() calls (http: GET /v1/status).")
@click.option("--http-mix", type=ListType(FiniteRange(0, 1e6), "SUBMIT,JOB,LEADERBOARD"),
              default="1,2,1", show_default=True, callback=_http_mix,
              help="--workload http: relative weights of job submissions, job reads and "
                   "leaderboard reads.")
@click.option("--dataset", default="letters", show_default=True,
              help="--workload http: the dataset jobs train on and the leaderboard reads name.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="--workload http: rounds per submitted job.")
@click.option("--gateway-arg", "gateway_args", multiple=True, metavar="ARG",
              help="An option for the gateway the script starts, after its raised limits "
                   "(repeatable; e.g. --gateway-arg=--rate-per-s=20 measures with the "
                   "limiter on).")
@click.option("--shards", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Shards per training round.")
@click.option("--shard-rows", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Rows per shard.")
@click.option("--hidden", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Hidden units h: of the training rounds, the served model, the http jobs.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Epochs per training round (http: per round of a submitted job).")
@click.option("--deadline-s", "--deadline", "deadline_s", cls=RenamedOption,
              type=FiniteRange(0.1, 3600), default=30.0,
              show_default=True, help="Deadline of each training round (http: timeout of "
                                      "each request), seconds.")
@click.option("--policy", type=POLICY_CHOICE, default="round-robin", show_default=True,
              help="Policy of the --local coordinator.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the weights, the rows and every client's choices.")
@click.option("--token", default="", envvar="FEDCLUSTER_TOKEN",
              help="Cluster token, if any (http: given to the gateway the script starts).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Results go to OUT/LABEL/ (comparisons to OUT/compare_*).")
@click.option("--label", default=None,
              help="Name of this run [nodesN with --local, else run; http-... for http].")
@click.option("--compare", "compare_labels", default=None,
              help="Only compare earlier runs OUT/label1,OUT/label2,... in one report.")
@click.option("--compare-kind", type=click.Choice(KINDS), default="train", show_default=True,
              help="Request kind plotted in a comparison.")
def cli(coordinator: Address | None, local_nodes: int | None, gateway_url: str | None,
        levels: list[int], requests: int | None, duration_s: float | None, max_requests: int,
        level_timeout_s: float, workload_kind: str, predict_rows: int, status_share: float,
        http_mix: tuple[float, ...], dataset: str, rounds: int, gateway_args: tuple[str, ...],
        shards: int, shard_rows: int,
        hidden: int, epochs: int, deadline_s: float, policy: str, seed: int, token: str,
        out_dir: Path, label: str | None, compare_labels: str | None,
        compare_kind: str) -> None:
    """Drive a cluster (or its gateway) with concurrent clients; write raw and summary CSV,
    plots, a report."""
    require_module("matplotlib")  # before the load, not after it
    http = workload_kind == "http"
    if http:
        require_module("httpx")
    configure_logging("WARNING", component="loadtest")
    logging.getLogger("thrift").setLevel(logging.CRITICAL)  # failures are recorded as data
    if compare_labels:
        labels = [x.strip() for x in compare_labels.split(",") if x.strip()]
        report = compare(out_dir, labels, compare_kind)
        click.echo(f"comparison of {', '.join(labels)}: {report}")
        return
    if gateway_url is not None and not http:
        raise click.UsageError("--gateway is for --workload http")
    if gateway_args and (not http or gateway_url is not None):
        raise click.UsageError("--gateway-arg is for a gateway the script starts "
                               "(--workload http with --local or --coordinator)")
    if http and sum(x is not None for x in (coordinator, local_nodes, gateway_url)) != 1:
        raise click.UsageError("give exactly one of --coordinator HOST:PORT, --local N or "
                               "--gateway URL")
    if not http and (coordinator is None) == (local_nodes is None):
        raise click.UsageError("give exactly one of --coordinator HOST:PORT or --local N")
    label = label or ("http-" if http else "") + (f"nodes{local_nodes}" if local_nodes
                                                  else "run")
    if not label.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise click.BadParameter("use letters, digits, - _ . only", param_hint="--label")
    bound = requests or (max_requests if duration_s else 20)
    workload = Workload(shards, shard_rows, hidden, epochs, status_share=status_share,
                        deadline_s=deadline_s, seed=seed, kind=workload_kind,
                        predict_rows=predict_rows, http_mix=http_mix, dataset=dataset,
                        rounds=rounds)
    run_dir = out_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    if http:
        cluster = (None if gateway_url else
                   ClusterUnderTest(coordinator, local_nodes, policy, run_dir))
        gateway = GatewayUnderTest(gateway_url, cluster, run_dir, token,
                                   raised_limits(max(levels)) + list(gateway_args))
        with gateway as base_url:
            records, env = drive_http(base_url, levels, bound, duration_s, workload,
                                      level_timeout_s, gateway.options(),
                                      cancel_leftovers=gateway_url is not None)
    else:
        with ClusterUnderTest(coordinator, local_nodes, policy, run_dir) as address:
            records, env = drive(address, levels, bound, duration_s, workload, run_dir, token,
                                 level_timeout_s)
    summary = summarise(records)
    errors = error_counts(records)
    write_csv(run_dir / "raw.csv", RAW_COLUMNS, [asdict(r) for r in records])
    write_csv(run_dir / "summary.csv", SUMMARY_COLUMNS, summary)
    write_csv(run_dir / "errors.csv", ERROR_COLUMNS, errors)
    run = {"label": label, "started": dt.datetime.now(dt.timezone.utc).strftime(
               "%Y-%m-%d %H:%M:%S"),
           "command": " ".join(["python scripts/loadtest.py", *sys.argv[1:]]),
           "levels": levels, "requests": bound, "duration_s": duration_s,
           "workload": asdict(workload), "environment": env}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    plot_run(summary, run_dir)
    write_report(run_dir, run, summary, errors)
    click.echo("\n".join(results_table(summary)))
    if errors:
        click.echo("\n" + "\n".join(errors_lines(errors)))
    click.echo(f"\nwrote {run_dir}/: raw.csv summary.csv errors.csv throughput.png "
               "latency_p95.png error_rate.png run.json report.md")


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
        except BaseException:  # Ctrl-C while starting: what did start stops too
            self._local.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self._local is not None:
            self._local.stop()


def raised_limits(max_clients: int) -> list[str]:
    """Options for a gateway the script starts: no per-user limit in the way of the load,
    and room for every client's connection; the rest as `python -m gateway` defaults them."""
    return ["--rate-per-s", "1000000", "--login-rate-per-s", "1000000",
            "--max-queued-per-user", "100000",
            "--max-connections", str(max(256, 2 * max_clients + 16))]


class GatewayUnderTest:
    """The gateway to load: the one given (--gateway URL), or one started (by PID, stopped
    afterwards, also on failure) over the cluster under test; its base URL."""

    def __init__(self, url: str | None, cluster: ClusterUnderTest | None, run_dir: Path,
                 token: str, args: list[str]) -> None:
        self._url, self._cluster, self._run_dir = url, cluster, run_dir
        self._token, self._args = token, args
        self._process: ServerProcess | None = None
        self._stack = contextlib.ExitStack()

    def options(self) -> str:
        """How the gateway was started, for the report."""
        if self._url is not None:
            return "running before the load test; its options unknown"
        return "started by the load test: " + " ".join(self._args)

    def __enter__(self) -> str:
        if self._url is not None:
            return self._url
        assert self._cluster is not None
        workdir = Path(tempfile.mkdtemp(prefix="gateway-", dir=self._run_dir))
        try:
            address = self._stack.enter_context(self._cluster)
            args = list(self._args)
            if self._token:
                token_file = workdir / "cluster-token"
                token_file.touch(mode=0o600)
                token_file.write_text(self._token + "\n", encoding="utf-8")
                args += ["--token-file", str(token_file)]
            self._process = start_gateway(workdir, [address], *args)
            return f"http://{self._process.address}"
        except (RuntimeError, TimeoutError, OSError) as exc:
            self._stack.close()
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = lines[-1] if lines else type(exc).__name__  # the log's last line says why
            raise click.ClickException(f"could not start the gateway: {why[:500]} (its log: "
                                       f"{workdir}/gateway-0.log)") from None
        except BaseException:  # a ClickException from the cluster, or Ctrl-C
            self._stack.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._process is not None:
                self._process.stop(timeout_s=15.0)  # its running jobs reach a round boundary
        finally:
            self._stack.close()


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

    def client(level: Level, i: int, out: list[Record]) -> None:
        run_client(level, i, address, workload, refs, paths, model, t0, token, out)

    return run_levels(levels, requests, duration_s, client, workload, level_timeout_s), env


def run_levels(levels: list[int], requests: int, duration_s: float | None, client: ClientLoop,
               workload: Workload, level_timeout_s: float) -> list[Record]:
    """Every level in turn, a line on stderr after each."""
    records: list[Record] = []
    for n in levels:
        level_records = run_level(n, requests, duration_s, client, workload, level_timeout_s)
        n_ok = sum(r.ok for r in level_records)
        click.echo(f"level {n:>4}: {len(level_records)} requests, {n_ok} ok", err=True)
        records += level_records
    return records


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


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: what it started stops


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        run_cli(cli, "loadtest.py", argv)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
