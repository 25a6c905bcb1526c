"""`python -m compute_node PORT LOAD_PROBABILITY [options]`: serve shard training tasks."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import click

from compute_node.handler import ComputeNodeHandler
from compute_node.load import LoadConfig, LoadSimulator
from compute_node.node import ComputeNodeCore
from compute_node.registration import Registrar
from compute_node.shards import node_store
from idl.admission import ServerLimits
from idl.gen import ComputeNode
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from idl.rpc import Address, ThriftServer
from idl.tls import TlsContexts
from runtime.cli import (
    AddressType,
    finite,
    log_level_option,
    metrics_port_option,
    run_cli,
    serve_metrics_or_fail,
    server_limit_options,
    tls_options,
    token_options,
)
from runtime.events import configure_logging, log_event


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("port", type=click.IntRange(0, 65535))
@click.argument("load_probability", type=click.FloatRange(0.0, 1.0), callback=finite)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--load-delay", type=click.FloatRange(min=0.0), default=3.0, show_default=True,
    callback=finite, help="Seconds a loaded task sleeps before training.",
)
@click.option("--seed", type=int, default=None, help="Seed for load and fault draws [random].")
@click.option(
    "--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory whose files (by sha256) this node serves without upload.",
)
@click.option(
    "--coordinator", "coordinators", type=AddressType(), multiple=True,
    help="Coordinator to register with and heartbeat (repeatable).",
)
@click.option(
    "--heartbeat-s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
    callback=finite, help="Registration heartbeat interval.",
)
@click.option(
    "--advertise-host", default=None, help="Host coordinators reach this node at [--host]."
)
@click.option(
    "--crash-probability", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
    callback=finite, help="Fault injection: chance an accepted task kills the process.",
)
@click.option(
    "--extra-latency", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
    callback=finite, help="Fault injection: seconds to sleep before every train reply.",
)
@token_options("every call but ping must carry it.")
@click.option(
    "--max-task-work", type=click.IntRange(min=1), default=DEFAULT_MAX_TASK_WORK,
    show_default=True,
    help="Refuse tasks whose epochs x rows x parameters exceed this (InvalidRequest).",
)
@click.option(
    "--max-shard-cache-mb", type=click.FloatRange(min=0.0, min_open=True), default=1024.0,
    show_default=True, callback=finite, help="Bound on parsed shards kept in memory.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Tasks trained at once; the rest queue.",
)
@metrics_port_option
@server_limit_options
@tls_options(serves=True)
@log_level_option()
def cli(
    port: int,
    load_probability: float,
    host: str,
    load_delay: float,
    seed: int | None,
    data_dir: Path | None,
    coordinators: tuple[Address, ...],
    heartbeat_s: float,
    advertise_host: str | None,
    crash_probability: float,
    extra_latency: float,
    token: str,
    max_task_work: int,
    max_shard_cache_mb: float,
    workers: int,
    metrics_port: int | None,
    limits: ServerLimits,
    tls: TlsContexts,
    log_level: str,
) -> None:
    """Serve shard training tasks on PORT (0 = any free port), loaded with LOAD_PROBABILITY."""
    configure_logging(log_level, component="node")
    if seed is None:
        seed = secrets.randbits(32)
    store = node_store(int(max_shard_cache_mb * 1024 * 1024), data_dir)
    load = LoadSimulator(
        LoadConfig(load_probability, load_delay, crash_probability, extra_latency, seed)
    )
    core = ComputeNodeCore(store, load, workers=workers, token=token,
                           max_task_work=max_task_work)
    metrics = None
    handler = ComputeNodeHandler(core)
    if metrics_port is not None:  # imported only when asked for: prometheus-client is optional
        from compute_node.metrics import MeteredNodeHandler, NodeMetrics

        metrics = NodeMetrics()
        handler = MeteredNodeHandler(core, metrics)
    try:
        server = ThriftServer(
            ComputeNode.Processor(handler), host, port, name="compute_node", tls=tls.server,
            **limits.kwargs(),
        )
    except OSError as exc:
        reason = exc.strerror or exc
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None
    handler.address = str(server.address)
    log_event(
        "node_config", address=str(server.address), load_probability=load_probability,
        load_delay_s=load_delay, seed=seed, workers=workers, data_dir=data_dir or "",
        shards_indexed=store.n_indexed, crash_probability=crash_probability,
        extra_latency_s=extra_latency, tls=tls.mode, auth="token" if token else "off",
        max_task_work=max_task_work,
    )
    if metrics:
        serve_metrics_or_fail(metrics, host, metrics_port)
    registrar = None
    if coordinators:
        advertised = Address(advertise_host or server.address.host, server.address.port)
        registrar = Registrar(list(coordinators), advertised, token, heartbeat_s, tls.client)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    print(f"listening on {server.address}", flush=True)
    if registrar:
        registrar.start()
    server.serve_forever()
    if registrar:
        registrar.stop()
    log_event("stopped", address=str(server.address))


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m compute_node", argv)


if __name__ == "__main__":
    main()
