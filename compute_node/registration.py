"""Announce the node to coordinators and keep doing so as its heartbeat.

A node started with --coordinator joins a running cluster without anyone editing
compute_nodes.txt; repeating the registration every interval lets a coordinator
that restarted (and forgot its nodes) learn about this one again.
"""

from __future__ import annotations

import ssl
import threading

from thrift.Thrift import TException

from idl.gen import Coordinator
from idl.rpc import Address, ConnectionPool
from runtime.events import log_event

CALL_TIMEOUT_S = 5.0


class Registrar:
    """Background thread calling register_node on every coordinator each `interval_s`."""

    def __init__(
        self, coordinators: list[Address], advertised: Address, token: str, interval_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._coordinators = coordinators
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
        self._thread.join(timeout=CALL_TIMEOUT_S + 1)
        self._pool.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for address in self._coordinators:
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
