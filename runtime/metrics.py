"""Serve a Prometheus registry over HTTP, for nodes and coordinators alike."""

from __future__ import annotations

from typing import Any

from idl.rpc import Address
from runtime.events import log_event


def serve_metrics(registry: Any, host: str, port: int) -> Address:
    """Serve `registry` at http://host:port/metrics (0 = any free port); return the address."""
    from prometheus_client import start_http_server  # only processes run with --metrics-port

    server, _thread = start_http_server(port, addr=host, registry=registry)
    address = Address(host, server.server_port)
    log_event("metrics_listening", address=str(address), url=f"http://{address}/metrics")
    return address
