"""The cluster as the gateway last saw it, refreshed once a second, and what changed.

One thread asks the coordinators for status() (first that answers, in order) and keeps
the answer for every dashboard that asks, so a hundred open pages cost the coordinator
one call a second, not a hundred. Comparing each answer with the one before gives the
events a person watching wants: a node dead or back, tasks retried, a coordinator lost.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thrift.Thrift import TException

from client.status import fetch_status
from idl.gen.ttypes import ClusterStatus
from idl.rpc import Address

log = logging.getLogger("fedcluster.gateway.watch")

# Counters whose growth is an event, and how to say it.
COUNTED_EVENTS = {
    "retries": ("task_retried", "{n} task(s) sent to another node"),
    "failures": ("task_failed", "{n} task attempt(s) failed"),
    "stragglers": ("task_straggler", "{n} straggling task(s) overtaken by a copy"),
    "rounds_failed": ("round_failed", "{n} round(s) failed at the coordinator"),
}


class NoCoordinator(RuntimeError):
    """No coordinator in the list answered status(); the message says why, each."""


def first_status(coordinators: list[Address], tls: ssl.SSLContext | None, token: str,
                 timeout_s: float) -> tuple[Address, ClusterStatus]:
    """status() of the first coordinator that answers, in order (the client's fail-over)."""
    reasons = []
    for address in coordinators:
        try:
            return address, fetch_status(address, timeout_s, tls, token)
        except (TException, OSError, EOFError) as exc:
            reasons.append(f"{address}: {getattr(exc, 'message', None) or exc}")
    raise NoCoordinator("no coordinator answered (" + "; ".join(reasons) + ")")


@dataclass
class Snapshot:
    """The latest status, or why there is none."""

    coordinator: str | None = None
    status: ClusterStatus | None = None
    error: str | None = None
    at: float = 0.0  # time.time() of the answer (or of the failure)
    nodes_seen: dict[str, bool] = field(default_factory=dict)


def node_changes(before: dict[str, bool], now: dict[str, bool]) -> list[tuple[str, str, str]]:
    """(kind, node, cause) for every node that died, came back or appeared."""
    changes = []
    for address, alive in now.items():
        was = before.get(address)
        if was is None:
            changes.append(("node_joined" if alive else "node_dead", address,
                            "registered with the coordinator" if alive
                            else "known to the coordinator but not answering"))
        elif was and not alive:
            changes.append(("node_dead", address, "stopped answering the coordinator's "
                                                  "heartbeats"))
        elif alive and not was:
            changes.append(("node_back", address, "answers the coordinator's heartbeats again"))
    for address in before.keys() - now.keys():
        changes.append(("node_removed", address, "no longer known to the coordinator"))
    return changes


class ClusterWatch:
    """Polls status() every `interval_s`; `record(kind, message, cause)` gets the events."""

    def __init__(self, coordinators: list[Address], token: str, tls: ssl.SSLContext | None,
                 record: Callable[[str, str, str], None], interval_s: float = 1.0) -> None:
        self._coordinators = coordinators
        self._token = token
        self._tls = tls
        self._record = record
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._counters: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cluster-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._interval_s + 6.0)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception:  # a bug here must not end the watching
                log.exception("cluster watch failed")
            self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))

    def poll(self) -> None:
        """One status() round: keep the answer, record what changed since the last."""
        try:
            address, status = first_status(self._coordinators, self._tls, self._token,
                                           min(5.0, max(1.0, self._interval_s * 2)))
        except NoCoordinator as exc:
            error = str(exc)
        else:
            self._seen(str(address), status)
            return
        with self._lock:
            previous = self._snapshot
            self._snapshot = Snapshot(None, None, error, time.time(), previous.nodes_seen)
        if previous.error is None:
            self._record("coordinator_lost", "the gateway cannot reach a coordinator", error)

    def _seen(self, coordinator: str, status: ClusterStatus) -> None:
        nodes = {n.address: bool(n.alive) for n in status.nodes or []}
        with self._lock:
            previous = self._snapshot
            self._snapshot = Snapshot(coordinator, status, None, time.time(), nodes)
        if previous.error is not None:
            self._record("coordinator_back", f"coordinator {coordinator} answers again",
                         "status() answered")
        first = previous.status is None and previous.error is None
        for kind, address, cause in node_changes(previous.nodes_seen, nodes):
            if first and kind == "node_joined":
                continue  # the gateway just started: these nodes did not join now
            self._record(kind, f"node {address} is {_word(kind)}", cause)
        counters = dict(status.counters or {})
        if self._counters is not None:
            for name, (kind, text) in COUNTED_EVENTS.items():
                grew = counters.get(name, 0) - self._counters.get(name, 0)
                if grew > 0:
                    self._record(kind, text.format(n=grew), f"coordinator {coordinator}")
        self._counters = counters


def _word(kind: str) -> str:
    return {"node_dead": "dead", "node_back": "alive again", "node_joined": "alive",
            "node_removed": "gone"}.get(kind, kind)


def status_view(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as JSON: nodes, counters, and how old it is."""
    status = snapshot.status
    view: dict[str, Any] = {
        "coordinator": snapshot.coordinator, "reachable": status is not None,
        "error": snapshot.error,
        "as_of_s_ago": round(time.time() - snapshot.at, 3) if snapshot.at else None,
        "policy": status.policy if status else None, "nodes": [], "counters": {},
    }
    if status is not None:
        view["nodes"] = [node_view(n) for n in status.nodes or []]
        view["counters"] = dict(status.counters or {})
    return view


def node_view(n: Any) -> dict[str, Any]:
    return {"address": n.address, "alive": n.alive, "load_probability": n.load_probability,
            "tasks_in_flight": n.tasks_in_flight, "tasks_done": n.tasks_done,
            "failures": n.failures,
            "last_seen_s_ago": None if n.last_seen_s_ago < 0 else n.last_seen_s_ago,
            "recent_service_s": n.recent_service_s}
