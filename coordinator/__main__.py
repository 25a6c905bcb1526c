"""`python -m coordinator PORT POLICY [options]`: schedule round tasks onto compute nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from coordinator.executor import Counters, RoundExecutor
from coordinator.handler import CoordinatorHandler
from coordinator.health import HealthMonitor
from coordinator.models import ModelShelf
from coordinator.node_calls import NodeCaller
from coordinator.nodes_file import NodesFileError, read_nodes_file
from coordinator.policies import policy_name
from coordinator.registry import Registry
from coordinator.service import DEFAULT_MAX_NODES, CoordinatorService
from coordinator.serving import BatchSettings, Serving
from idl.admission import ServerLimits
from idl.gen import Coordinator
from idl.tls import TlsContexts
from runtime.cli import (
    FiniteRange,
    listen_or_fail,
    run_cli,
    serve_metrics_or_fail,
    serve_until_stopped,
    server_options,
)
from runtime.events import configure_logging, log_event
from runtime.shard_store import ShardStore

DEFAULT_NODES_FILE = "compute_nodes.txt"


def _policy(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return policy_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("port", type=click.IntRange(0, 65535))
@click.argument("policy", callback=_policy, metavar="POLICY")
@click.option(
    "--nodes", "nodes_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"Nodes file, host,port per line [default: {DEFAULT_NODES_FILE} if present].",
)
@click.option("--heartbeat-s", type=FiniteRange(min=0, min_open=True, max=3600),
              default=1.0, show_default=True, help="Seconds between node health probes.")
@click.option("--task-timeout-s", type=FiniteRange(min=0, min_open=True, max=86400),
              default=300.0, show_default=True, help="Longest a node may take for one task.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Node failures allowed per task before the round fails.")
@click.option("--straggler-factor", type=FiniteRange(min=0, max=1e6), default=4.0,
              show_default=True,
              help="Re-run a task elsewhere once it runs this many times the round's median "
                   "(0: never).")
@click.option("--straggler-min-s", type=FiniteRange(min=0, max=86400), default=10.0,
              show_default=True,
              help="...and only once it is this many seconds beyond the median.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed for the policies' random choices.")
@click.option("--max-nodes", type=click.IntRange(min=1), default=DEFAULT_MAX_NODES,
              show_default=True, help="Most nodes known at once; registrations beyond are "
                                      "refused.")
@click.option("--batch-max-rows", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows in one prediction batch; a larger request goes alone (1: no batching).")
@click.option("--batch-wait-s", type=FiniteRange(min=0, max=60), default=0.002,
              show_default=True,
              help="Longest a prediction waits for others to share its batch.")
@click.option("--no-batching", is_flag=True,
              help="Send every prediction alone from its own call (as --batch-max-rows 1).")
@click.option("--max-queued-rows", type=click.IntRange(min=1), default=65536,
              show_default=True,
              help="Rows of predictions waiting or in flight at once; beyond, Overloaded.")
@click.option("--batch-senders", type=click.IntRange(min=1, max=256), default=4,
              show_default=True, help="Prediction batches in flight to nodes at once.")
@server_options(
    token="every call but ping must carry it, and the coordinator sends it to nodes.",
    cache="shards held for forwarding to nodes", work="rounds whose tasks'",
    models="model files held for forwarding to nodes",
)
def cli(
    port: int,
    policy: str,
    host: str,
    nodes_path: Path | None,
    heartbeat_s: float,
    task_timeout_s: float,
    max_attempts: int,
    straggler_factor: float,
    straggler_min_s: float,
    seed: int,
    batch_max_rows: int,
    batch_wait_s: float,
    no_batching: bool,
    max_queued_rows: int,
    batch_senders: int,
    token: str,
    max_nodes: int,
    max_task_work: int,
    max_shard_cache_bytes: int,
    max_model_cache_bytes: int,
    max_predict_work: int,
    metrics_port: int | None,
    limits: ServerLimits,
    tls: TlsContexts,
    log_level: str,
) -> None:
    """Coordinate rounds on PORT (0 = any free port) with POLICY: 1|random, 2|load-aware,
    3|round-robin."""
    configure_logging(log_level, component="coordinator")
    # thrift logs every refused connect at ERROR; the executor already reports those as events.
    logging.getLogger("thrift").setLevel(logging.CRITICAL)
    registry, n_nodes = _registry(nodes_path, heartbeat_s)
    counters = Counters()
    caller = NodeCaller(token, counters, tls=tls.client)
    executor = RoundExecutor(
        registry, caller, task_timeout_s=task_timeout_s, max_attempts=max_attempts,
        straggler_factor=straggler_factor, straggler_min_s=straggler_min_s, counters=counters,
        cancel_node=caller.cancel,
    )
    store: ShardStore[bytes] = ShardStore(max_shard_cache_bytes, refuse_oversize=True,
                                          owner="the coordinator")
    service = CoordinatorService(
        registry, store, executor, policy=policy, seed=seed, token=token, max_nodes=max_nodes,
        max_task_work=max_task_work,
    )
    batching = BatchSettings(1 if no_batching else batch_max_rows, batch_wait_s,
                             max_queued_rows, batch_senders)
    serving = Serving(service, ModelShelf(max_model_cache_bytes), caller, batching=batching,
                      max_work=max_predict_work, max_attempts=max_attempts, token=token)
    metrics = _metrics() if metrics_port is not None else None
    server = listen_or_fail(Coordinator.Processor(_handler(service, serving, metrics)), host,
                            port, "coordinator", tls, limits)
    service.address = str(server.address)
    log_event(
        "coordinator_config", address=str(server.address), policy=policy, nodes=n_nodes,
        heartbeat_s=heartbeat_s, task_timeout_s=task_timeout_s, max_attempts=max_attempts,
        straggler_factor=straggler_factor, straggler_min_s=straggler_min_s, seed=seed,
        tls=tls.mode, auth="token" if token else "off", max_nodes=max_nodes,
        max_task_work=max_task_work, batch_max_rows=batching.max_rows,
        batch_wait_s=batch_wait_s, max_queued_rows=max_queued_rows,
        batch_senders=batch_senders, max_predict_work=max_predict_work,
        max_model_cache_bytes=max_model_cache_bytes,
    )
    if metrics and metrics_port is not None:
        serve_metrics_or_fail(metrics, host, metrics_port)
    try:
        serve_until_stopped(server, [HealthMonitor(registry, caller.probe, heartbeat_s)])
    finally:
        serving.close()
        caller.close()


def _registry(nodes_path: Path | None, heartbeat_s: float) -> tuple[Registry, int]:
    """The node registry, holding the nodes file's nodes; and how many it named."""
    nodes = _read_nodes(nodes_path)
    registry = Registry(probe_interval_s=heartbeat_s, max_backoff_s=max(8 * heartbeat_s, 2.0))
    for address in nodes:
        registry.add(address)
    return registry, len(nodes)


def _metrics():
    """Round and call metrics; imported only when asked for: prometheus-client is optional."""
    from coordinator.metrics import CoordinatorMetrics

    return CoordinatorMetrics()


def _handler(service: CoordinatorService, serving: Serving, metrics) -> CoordinatorHandler:
    """The Thrift handler; with --metrics-port, one that also times rounds."""
    if metrics is None:
        return CoordinatorHandler(service, serving)
    from coordinator.metrics import MeteredCoordinatorHandler

    return MeteredCoordinatorHandler(service, metrics, serving)


def _read_nodes(path: Path | None) -> list:
    """The explicit file must exist; the default one may be absent (nodes may register)."""
    if path is None:
        path = Path(DEFAULT_NODES_FILE)
        if not path.exists():
            log_event("no_nodes_file", level=logging.WARNING, path=str(path),
                      hint="nodes may register with --coordinator")
            return []
    try:
        return read_nodes_file(path)
    except NodesFileError as exc:
        raise click.ClickException(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m coordinator", argv)


if __name__ == "__main__":
    main()
