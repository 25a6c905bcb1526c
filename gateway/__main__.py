"""python -m gateway PORT --coordinators HOST:PORT[,...] --db PATH --data-root DIR [options]

The front door for people: accounts, a durable queue of training jobs, the run registry
and a leaderboard over HTTP/JSON (FastAPI, served by uvicorn; OpenAPI pages at /docs).
Prints `listening on HOST:PORT` once it accepts connections; SIGTERM or Ctrl-C stops it,
leaving running jobs to resume from their checkpoints at the next start.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import click

from gateway.accounts import Accounts, read_admin_token
from gateway.api import Gateway, Limits, create_app
from gateway.datasets import Catalogue
from gateway.jobs import Cluster, JobRunner
from gateway.limits import BodyLimit, RateLimiter
from gateway.scheduler import Scheduler
from gateway.store import Registry, StoreError
from gateway.watch import ClusterWatch
from idl.rpc import Address
from idl.tls import TlsContexts
from runtime.cli import (
    AddressListType,
    FiniteRange,
    log_level_option,
    run_cli,
    tls_options,
    token_options,
)
from runtime.events import configure_logging, log_event

STOP_WAIT_S = 5.0  # how long a stop waits for running jobs to reach a round boundary


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("port", type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--coordinators", type=AddressListType(), required=True,
              help="Coordinators to run jobs on, tried in order (fail-over).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("gateway.db"), show_default=True,
              help="The registry (SQLite): users, tokens, jobs and their rounds.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Directory whose subdirectories of shards are the datasets "
                                  "people may name (the built-in letters is always offered).")
@click.option("--jobs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where each job keeps its checkpoint, timing.txt and model [DB-jobs/ "
                   "beside --db].")
@click.option("--max-running", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Jobs run at once; the rest wait in the queue, shared fairly between users.")
@click.option("--max-queued-per-user", type=click.IntRange(1, 100_000), default=20,
              show_default=True, help="Jobs one user may have waiting.")
@click.option("--closed-registration", is_flag=True,
              help="Only the admin token may create accounts.")
@click.option("--admin-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="File holding the operator's token: sees and cancels every "
                                 "job, creates accounts under --closed-registration.")
@click.option("--token-ttl-h", type=FiniteRange(min=0, min_open=True, max=24 * 366),
              default=24.0, show_default=True, help="Hours a login token stays valid.")
@click.option("--rate-per-s", type=FiniteRange(min=0, min_open=True, max=1e6), default=20.0,
              show_default=True, help="Requests per second one token may make (sustained; "
                                      "twice as many in a burst); beyond: 429.")
@click.option("--login-rate-per-s", type=FiniteRange(min=0, min_open=True, max=1e6),
              default=5.0, show_default=True,
              help="Registrations, logins and bad tokens per second from one address.")
@click.option("--max-body-kb", type=click.IntRange(1, 1024 * 1024), default=2048,
              show_default=True, help="Largest request body accepted; beyond: 413.")
@click.option("--body-timeout-s", type=FiniteRange(min=0, min_open=True, max=3600),
              default=30.0, show_default=True,
              help="Seconds a request body may take to arrive; beyond: 408.")
@click.option("--max-rounds", type=click.IntRange(min=1), default=Limits.max_rounds,
              show_default=True, help="Most rounds a job may ask for.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=Limits.max_epochs,
              show_default=True, help="Most epochs per round a job may ask for.")
@click.option("--max-hidden", type=click.IntRange(min=1), default=Limits.max_hidden,
              show_default=True, help="Most hidden units (h) a job may ask for.")
@click.option("--max-predict-rows", type=click.IntRange(min=1), default=Limits.max_predict_rows,
              show_default=True, help="Most rows one prediction request may carry.")
@click.option("--max-connections", type=click.IntRange(1, 100_000), default=256,
              show_default=True, help="Connections served at once; beyond: 503.")
@click.option("--target-error", type=FiniteRange(0, 1, min_open=True), default=0.3,
              show_default=True, help="Validation error the leaderboard's time-to-target "
                                      "counts to, unless a request names its own.")
@click.option("--public-dashboard", is_flag=True,
              help="The dashboard (/ and GET /v1/dashboard) read-only for anyone who can "
                   "reach the gateway, without logging in.")
@click.option("--watch-interval-s", type=FiniteRange(min=0.1, max=60), default=1.0,
              show_default=True, help="How often the gateway asks the coordinator for the "
                                      "cluster's status (the dashboard's nodes and events).")
@click.option("--deadline-s", "round_deadline_s", type=FiniteRange(min=0, min_open=True,
              max=86400), default=600.0, show_default=True,
              help="Seconds a job's round may take before it fails.")
@token_options("sent with every call to the coordinators.")
@tls_options(serves=False)
@log_level_option("INFO")
def cli(port: int, host: str, coordinators: list[Address], db: Path, data_root: Path,
        jobs_dir: Path | None, max_running: int, max_queued_per_user: int,
        closed_registration: bool, admin_token_file: Path | None, token_ttl_h: float,
        rate_per_s: float, login_rate_per_s: float, max_body_kb: int, body_timeout_s: float,
        max_rounds: int, max_epochs: int, max_hidden: int, max_predict_rows: int,
        max_connections: int, target_error: float, public_dashboard: bool,
        watch_interval_s: float, round_deadline_s: float, token: str, tls: TlsContexts,
        log_level: str) -> None:
    """Serve the gateway on PORT (0: any free port)."""
    import uvicorn  # the server's own import, after the options are checked

    configure_logging(log_level, component="gateway")
    if not coordinators:
        raise click.BadParameter("give at least one HOST:PORT", param_hint="--coordinators")
    try:
        admin_token = read_admin_token(admin_token_file)
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--admin-token-file") from None
    if closed_registration and not admin_token:
        raise click.UsageError("--closed-registration needs --admin-token-file: otherwise "
                               "nobody could create an account")
    try:
        registry = Registry(db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    jobs_dir = jobs_dir or db.with_name(f"{db.stem}-jobs")
    catalogue = Catalogue(data_root)
    cluster = Cluster(list(coordinators), token, tls.client, round_deadline_s)
    scheduler = Scheduler(registry, JobRunner(registry, catalogue, cluster, jobs_dir),
                          max_running)
    watch = ClusterWatch(cluster.coordinators, token, tls.client, registry.add_event,
                         watch_interval_s)
    gateway = Gateway(
        registry=registry, accounts=Accounts(registry, token_ttl_h * 3600, admin_token),
        catalogue=catalogue, scheduler=scheduler, cluster=cluster, jobs_dir=jobs_dir,
        limits=Limits(max_rounds, max_epochs, max_hidden, max_queued_per_user,
                      max_predict_rows),
        user_rate=RateLimiter(rate_per_s, max(1, int(2 * rate_per_s))),
        login_rate=RateLimiter(login_rate_per_s, max(1, int(2 * login_rate_per_s))),
        closed_registration=closed_registration, target_error=target_error,
        watch=watch, public_dashboard=public_dashboard,
    )
    try:
        sock = socket.create_server((host, port), backlog=1024)
        # Its proto is 0, so asyncio does not set TCP_NODELAY on the connections it accepts:
        # a response's body would wait for the ACK of its headers (~40 ms per request on a
        # kept-alive connection). Accepted connections inherit the option from here.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        registry.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: "
                                   f"{exc.strerror or exc}") from None
    bound = Address(host, sock.getsockname()[1])

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        scheduler.start()
        watch.start()
        log_event("gateway_started", address=str(bound), db=str(db), jobs_dir=str(jobs_dir))
        click.echo(f"listening on {bound}")
        sys.stdout.flush()
        yield
        watch.stop()
        scheduler.stop(STOP_WAIT_S)
        log_event("gateway_stopped", running=len(scheduler.running()))

    app = create_app(gateway)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        BodyLimit(app, max_body_kb * 1024, body_timeout_s), log_config=None,
        log_level=log_level.lower(), access_log=log_level.upper() == "DEBUG",
        limit_concurrency=max_connections, timeout_keep_alive=5, server_header=False,
        timeout_graceful_shutdown=int(STOP_WAIT_S), lifespan="on",
    )
    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again for the
    # handler it found installed: a no-op here, so a clean stop exits 0 as the other
    # servers do, instead of dying by the signal after its graceful shutdown.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        registry.close()


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m gateway", argv)


if __name__ == "__main__":
    main()
