"""Announce the node to coordinators and keep doing so as its heartbeat.

A node started with --coordinator joins a running cluster without anyone editing
compute_nodes.txt; repeating the registration every interval lets a coordinator
that restarted (and forgot its nodes) learn about this one again. A name that resolves
to several addresses (a Kubernetes headless Service over coordinator replicas) is
resolved again at every heartbeat and each address is registered with, so every replica
knows every node, also replicas that start later.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

from thrift.Thrift import TException

from idl.gen import Coordinator
from idl.rpc import Address, ConnectionPool
from runtime.events import log_event

CALL_TIMEOUT_S = 5.0
STOP_WAIT_S = 1.0  # a heartbeat stuck connecting must not hold up the node's shutdown


def resolve_all(address: Address) -> list[Address]:
    """Every address a coordinator name stands for (one for an IP or a plain name).

    With TLS the name itself is dialled instead (the certificate names it, not the pods).
    """
    hosts: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):  # one family: localhost is not two nodes
        try:
            infos = socket.getaddrinfo(address.host, address.port, family, socket.SOCK_STREAM)
        except OSError:
            continue  # the call itself will say what is wrong
        hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if hosts:
            break
    if len(hosts) <= 1:
        return [address]
    return [Address(host, address.port) for host in hosts]


class Registrar:
    """Background thread calling register_node on every coordinator each `interval_s`."""

    def __init__(
        self, coordinators: list[Address], advertised: Address, token: str, interval_s: float,
        tls: ssl.SSLContext | None = None,
        resolve: Callable[[Address], list[Address]] = resolve_all,
    ) -> None:
        self._coordinators = coordinators
        self._resolve = resolve if tls is None else (lambda address: [address])
        self._advertised = advertised
        self._token = token
        self._interval_s = interval_s
        self._pool = ConnectionPool(Coordinator.Client, tls=tls)
        self._stopping = threading.Event()
        self._reachable: dict[Address, bool] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="registrar")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=STOP_WAIT_S)  # a daemon: a stuck connect dies with us
        self._pool.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for named in self._coordinators:
                for address in self._resolve(named):
                    if self._stopping.is_set():
                        return
                    self._register(address)
            self._stopping.wait(self._interval_s)

    def _register(self, address: Address) -> None:
        host, port = self._advertised.host, self._advertised.port
        try:
            self._pool.call(
                address, CALL_TIMEOUT_S, lambda c: c.register_node(host, port, self._token)
            )
            ok, reason = True, ""
        except (TException, OSError) as exc:
            self._pool.discard(address)
            ok, reason = False, getattr(exc, "message", None) or repr(exc)
        if self._reachable.get(address) != ok:
            # Log changes only: a heartbeat every second must not flood the log.
            event = "registered" if ok else "registration_failed"
            log_event(event, coordinator=str(address), node=str(self._advertised), reason=reason)
            self._reachable[address] = ok
