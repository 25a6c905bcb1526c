"""`python -m compute_node PORT LOAD_PROBABILITY [options]`: serve shard training tasks."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import click

from compute_node.handler import ComputeNodeHandler
from compute_node.load import LoadConfig, LoadSimulator
from compute_node.node import WEIGHTS_WAIT_S, ComputeNodeCore
from compute_node.poison import MODES as POISON_MODES
from compute_node.poison import Poisoner
from compute_node.registration import Registrar
from compute_node.serving import NodeServing, model_store
from compute_node.shards import node_store
from idl.admission import ServerLimits
from idl.gen import ComputeNode
from idl.rpc import Address
from idl.tls import TlsContexts
from runtime.cli import (
    AddressType,
    FiniteRange,
    RenamedOption,
    listen_or_fail,
    run_cli,
    serve_metrics_or_fail,
    serve_until_stopped,
    server_options,
)
from runtime.events import configure_logging, log_event


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("port", type=click.IntRange(0, 65535))
@click.argument("load_probability", type=FiniteRange(0.0, 1.0))
@click.option(
    "--load-delay-s", "--load-delay", "load_delay_s", cls=RenamedOption,
    type=FiniteRange(min=0.0, max=3600), default=3.0, show_default=True,
    help="Seconds a loaded task sleeps before training.",
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
    "--heartbeat-s", type=FiniteRange(min=0.05, max=3600), default=1.0, show_default=True,
    help="Seconds between registration heartbeats.",
)
@click.option(
    "--advertise-host", default=None, help="Host coordinators reach this node at [--host]."
)
@click.option(
    "--crash-probability", type=FiniteRange(0.0, 1.0), default=0.0, show_default=True,
    help="Fault injection: chance an accepted task kills the process.",
)
@click.option(
    "--extra-latency-s", "--extra-latency", "extra_latency_s", cls=RenamedOption,
    type=FiniteRange(min=0.0, max=3600), default=0.0, show_default=True,
    help="Fault injection: seconds to sleep before every train reply.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Tasks trained at once; the rest queue.",
)
@click.option(
    "--weights-wait-s", type=FiniteRange(min=0.0, max=600), default=WEIGHTS_WAIT_S,
    show_default=True,
    help="Seconds a task naming weights not yet here waits for them (at most half its "
         "budget) before answering WeightsMissing.",
)
@click.option(
    "--poison", type=click.Choice(POISON_MODES), default=None,
    help="Fault injection: return a poisoned delta for every task trained: negated "
         "(sign-flip), x100 (scale) or seeded noise of the same norm (noise; seeded from "
         "--seed and the task) [off].",
)
@server_options(token="every call but ping must carry it.", cache="parsed shards kept in memory",
                work="tasks whose", models="parsed models kept in memory")
def cli(
    port: int,
    load_probability: float,
    host: str,
    load_delay_s: float,
    seed: int | None,
    data_dir: Path | None,
    coordinators: tuple[Address, ...],
    heartbeat_s: float,
    advertise_host: str | None,
    crash_probability: float,
    extra_latency_s: float,
    token: str,
    max_task_work: int,
    max_shard_cache_bytes: int,
    max_model_cache_bytes: int,
    max_predict_work: int,
    workers: int,
    weights_wait_s: float,
    poison: str | None,
    metrics_port: int | None,
    limits: ServerLimits,
    tls: TlsContexts,
    log_level: str,
) -> None:
    """Serve shard training tasks on PORT (0 = any free port), loaded with LOAD_PROBABILITY."""
    configure_logging(log_level, component="node")
    load = LoadConfig(load_probability, load_delay_s, crash_probability, extra_latency_s,
                      secrets.randbits(32) if seed is None else seed)
    store = node_store(max_shard_cache_bytes, data_dir)
    poisoner = Poisoner(poison, load.seed) if poison else None
    core = ComputeNodeCore(store, LoadSimulator(load), workers=workers, token=token,
                           max_task_work=max_task_work, weights_wait_s=weights_wait_s,
                           poison=poisoner)
    serving = NodeServing(model_store(max_model_cache_bytes), store, max_predict_work)
    handler, metrics = _handler(core, serving, metered=metrics_port is not None)
    server = listen_or_fail(ComputeNode.Processor(handler), host, port, "compute_node", tls,
                            limits)
    handler.address = str(server.address)
    log_event(
        "node_config", address=str(server.address), load_probability=load_probability,
        load_delay_s=load_delay_s, seed=load.seed, workers=workers, data_dir=data_dir or "",
        shards_indexed=store.n_indexed, crash_probability=crash_probability,
        extra_latency_s=extra_latency_s, tls=tls.mode, auth="token" if token else "off",
        max_task_work=max_task_work, weights_wait_s=weights_wait_s,
        max_predict_work=max_predict_work,
        max_model_cache_bytes=max_model_cache_bytes, poison=poison or "off",
    )
    if poisoner:
        log_event("node_poisoned", level=logging.WARNING, mode=poisoner.mode, seed=load.seed,
                  effect="every trained delta is replaced by a poisoned one (--poison)")
    if metrics and metrics_port is not None:
        serve_metrics_or_fail(metrics, host, metrics_port)
    helpers = []
    if coordinators:
        advertised = Address(advertise_host or server.address.host, server.address.port)
        helpers.append(Registrar(list(coordinators), advertised, token, heartbeat_s, tls.client))
    serve_until_stopped(server, helpers)


def _handler(core: ComputeNodeCore, serving: NodeServing, *, metered: bool):
    """The Thrift handler and its metrics; with --metrics-port, one that also counts."""
    if not metered:
        return ComputeNodeHandler(core, serving=serving), None
    # imported only when asked for: prometheus-client is optional
    from compute_node.metrics import MeteredNodeHandler, NodeMetrics

    metrics = NodeMetrics()
    return MeteredNodeHandler(core, metrics, serving=serving), metrics


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m compute_node", argv)


if __name__ == "__main__":
    main()
