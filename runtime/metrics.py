"""Prometheus metrics for nodes and coordinators alike: an own registry, figures, an endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from idl.rpc import Address
from runtime.events import log_event

# (metric family class, name after the prefix, help text, attribute the value is read from)
Figure = tuple[Any, str, str, str]


class ProcessMetrics:
    """A process's own metrics registry (no process-wide globals) and its /metrics server."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry  # only processes run with --metrics-port

        self.registry = CollectorRegistry(auto_describe=True)

    def on_scrape(self, collect: Callable[[], Iterable[Any]]) -> None:
        """Have every scrape report the metric families `collect()` returns then."""
        self.registry.register(_OnScrape(collect))

    def serve(self, host: str, port: int) -> Address:
        """Serve /metrics on host:port (0 = any free port); return the bound address."""
        return serve_metrics(self.registry, host, port)


class _OnScrape:
    """A collector whose families are computed at each scrape (prometheus' collector protocol)."""

    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.collect = collect


def figure_families(prefix: str, figures: Iterable[Figure], source: object) -> Iterator[Any]:
    """One family per figure, its value read from `source` at scrape time."""
    for family, name, doc, attribute in figures:
        yield family(f"{prefix}_{name}", doc, value=getattr(source, attribute))


def per_node_families(
    prefix: str, figures: Iterable[Figure], nodes: Sequence[Any]
) -> Iterator[Any]:
    """One family per figure, a sample per node labelled with its address."""
    for family, name, doc, attribute in figures:
        metric = family(f"{prefix}_{name}", doc, labels=["node"])
        for node in nodes:
            metric.add_metric([node.address], getattr(node, attribute))
        yield metric


def serve_metrics(registry: Any, host: str, port: int) -> Address:
    """Serve `registry` at http://host:port/metrics (0 = any free port); return the address."""
    from prometheus_client import start_http_server  # only processes run with --metrics-port

    server, _thread = start_http_server(port, addr=host, registry=registry)
    address = Address(host, server.server_port)
    log_event("metrics_listening", address=str(address), url=f"http://{address}/metrics")
    return address
