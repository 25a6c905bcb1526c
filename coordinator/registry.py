"""Node membership and health: who is alive, how busy, how fast, and when to probe again.

One lock guards everything; waiters on `wait_for_alive` are woken when a node comes back,
so a round that ran out of nodes resumes the moment the heartbeat revives one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.policies import NodeView
from idl.rpc import Address
from runtime.events import log_event

EMA_WEIGHT = 0.3  # weight of the newest sample in the service-time average


class RegistryFull(Exception):
    """A new node asked to register but the registry already holds its maximum."""


@dataclass
class NodeState:
    address: Address
    alive: bool = True  # optimistic until a call or a probe fails
    last_seen: float | None = None
    in_flight: int = 0
    tasks_done: int = 0
    failures: int = 0
    service_s: float | None = None  # this coordinator's EMA of a task's round trip
    # From the node's own timings: the steady part of a task (compute, excluding queueing
    # and the simulated load delay) and the size of a load delay when one happens.
    steady_s: float | None = None
    delay_s: float = 0.0
    reported_service_s: float = 0.0
    reported_in_flight: int = 0
    load_probability: float = 0.0
    backoff_s: float = 0.0
    next_probe_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True)
class NodeSnapshot:
    """A copy of one node's state for status(), its fields named as in the IDL's NodeStatus."""

    address: str
    alive: bool
    load_probability: float
    tasks_in_flight: int
    tasks_done: int
    failures: int
    last_seen_s_ago: float  # -1 when never seen
    recent_service_s: float


class Registry:
    """Thread-safe table of known nodes, in the order they became known."""

    def __init__(
        self,
        *,
        probe_interval_s: float = 1.0,
        max_backoff_s: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nodes: dict[str, NodeState] = {}  # keyed by "host:port"
        # views() is called for every task placement: keep the alive nodes' views built and
        # replace one entry per change, so a pick costs a list copy, not N objects.
        self._views: list[NodeView] | None = None
        self._view_pos: dict[str, int] = {}
        self._changed = threading.Condition()
        self._probe_interval_s = probe_interval_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock

    def add(self, address: Address) -> bool:
        """Know `address` (alive until shown otherwise); False if it was already known."""
        with self._changed:
            if str(address) in self._nodes:
                return False
            self._nodes[str(address)] = NodeState(address)
            self._views = None
            self._changed.notify_all()
        log_event("node_added", node=str(address))
        return True

    def register(self, address: Address, *, max_nodes: int | None = None) -> None:
        """A node announced itself: know it and count the announcement as a heartbeat.

        A node already known always may (its heartbeat); a new one only while fewer than
        `max_nodes` are known (RegistryFull), so registrations cannot grow the table and
        its heartbeats without bound.
        """
        with self._changed:  # an RLock: the check and the add are one step
            if str(address) not in self._nodes:
                if max_nodes is not None and len(self._nodes) >= max_nodes:
                    raise RegistryFull(
                        f"this coordinator already knows {len(self._nodes)} nodes, its "
                        f"maximum (--max-nodes {max_nodes}); {address} was not added"
                    )
                self.add(address)
        self.mark_alive(address)

    def addresses(self) -> list[Address]:
        with self._changed:
            return [n.address for n in self._nodes.values()]

    def mark_alive(self, address: Address | str, load: dict | None = None) -> None:
        """A successful ping or call: the node is alive now; `load` is what it reported."""
        with self._changed:
            node = self._nodes.get(str(address))
            if node is None:
                return
            revived = not node.alive
            node.alive = True
            node.last_seen = self._clock()
            node.backoff_s = 0.0
            node.next_probe_at = node.last_seen + self._probe_interval_s
            if load:
                node.load_probability = float(load.get("load_probability", node.load_probability))
                node.reported_service_s = float(load.get("recent_service_s", 0.0))
                node.reported_in_flight = int(load.get("tasks_in_flight", 0))
            self._refresh(node)
            if revived:
                self._changed.notify_all()
        if revived:
            log_event("node_alive", node=str(address))

    def mark_dead(self, address: Address | str, reason: str, *, task_failed: bool = False) -> None:
        """A failed ping or call: stop scheduling on it and re-probe with growing backoff."""
        with self._changed:
            node = self._nodes.get(str(address))
            if node is None:
                return
            was_alive = node.alive
            if task_failed or was_alive:
                node.failures += 1
            node.alive = False
            node.last_error = reason
            node.backoff_s = min(
                max(node.backoff_s * 2, self._probe_interval_s), self._max_backoff_s
            )
            node.next_probe_at = self._clock() + node.backoff_s
            self._refresh(node)
        if was_alive:
            log_event("node_dead", node=str(address), reason=reason)

    def due_for_probe(self) -> list[Address]:
        """Alive nodes every interval; dead nodes once their backoff has passed."""
        now = self._clock()
        with self._changed:
            return [n.address for n in self._nodes.values() if n.next_probe_at <= now]

    def schedule_probe(self, address: Address | str) -> None:
        """Probe `address` again one interval from now (used after a probe is sent)."""
        with self._changed:
            node = self._nodes.get(str(address))
            if node is not None and node.alive:
                node.next_probe_at = self._clock() + self._probe_interval_s

    def views(self) -> list[NodeView]:
        """Snapshot of the alive nodes for a policy, in registration order."""
        with self._changed:
            if self._views is None:
                alive = [n for n in self._nodes.values() if n.alive]
                self._views = [_view(n) for n in alive]
                self._view_pos = {str(n.address): i for i, n in enumerate(alive)}
            return list(self._views)

    def _refresh(self, node: NodeState) -> None:
        """Bring `node`'s cached view up to date (caller holds the lock)."""
        if self._views is None:
            return
        pos = self._view_pos.get(str(node.address))
        if node.alive and pos is not None:
            self._views[pos] = _view(node)
        else:  # joined or left the alive set: rebuild on the next views()
            self._views = None

    def n_alive(self) -> int:
        with self._changed:
            return sum(n.alive for n in self._nodes.values())

    def begin_task(self, address: Address | str) -> None:
        with self._changed:
            node = self._nodes.get(str(address))
            if node is not None:
                node.in_flight += 1
                self._refresh(node)

    def end_task(
        self,
        address: Address | str,
        elapsed_s: float | None,
        node_times: tuple[float, float] | None = None,
    ) -> None:
        """A task left the node; `elapsed_s` is its round trip when it succeeded.

        `node_times` = (busy_s, load_delay_s) as the node measured them: busy is the time
        from getting a worker to replying, so it excludes the queue the round trip includes.
        """
        with self._changed:
            node = self._nodes.get(str(address))
            if node is None:
                return
            node.in_flight = max(0, node.in_flight - 1)
            if elapsed_s is not None:
                node.tasks_done += 1
                node.last_seen = self._clock()
                if node.alive:  # an answered task is as good as a heartbeat: skip the probe
                    node.next_probe_at = max(
                        node.next_probe_at, node.last_seen + self._probe_interval_s
                    )
                node.service_s = _ema(node.service_s, elapsed_s)
                if node_times is not None:
                    busy_s, delay_s = node_times
                    node.steady_s = _ema(node.steady_s, max(busy_s - delay_s, 0.0))
                    if delay_s > 0:
                        node.delay_s = delay_s if node.delay_s == 0 else _ema(node.delay_s,
                                                                              delay_s)
            self._refresh(node)

    def wait_for_alive(self, timeout_s: float) -> bool:
        """Block until some node is alive or `timeout_s` passes; True if one is alive."""
        deadline = self._clock() + timeout_s
        with self._changed:
            while not any(n.alive for n in self._nodes.values()):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def snapshot(self) -> list[NodeSnapshot]:
        now = self._clock()
        with self._changed:
            return [
                NodeSnapshot(
                    address=str(n.address), alive=n.alive, load_probability=n.load_probability,
                    tasks_in_flight=n.in_flight, tasks_done=n.tasks_done, failures=n.failures,
                    last_seen_s_ago=-1.0 if n.last_seen is None else now - n.last_seen,
                    recent_service_s=n.service_s
                    if n.service_s is not None
                    else n.reported_service_s,
                )
                for n in self._nodes.values()
            ]


def _ema(average: float | None, sample: float) -> float:
    return sample if average is None else EMA_WEIGHT * sample + (1 - EMA_WEIGHT) * average


def expected_service_s(n: NodeState) -> float | None:
    """Expected time a task occupies the node once it starts, or None if never measured.

    With the node's own timings: steady time plus p times the load delay seen there (p as
    the node reports it), an expectation a handful of noisy samples cannot swing. Without:
    this coordinator's round-trip average, else what the node reports.
    """
    if n.steady_s is not None:
        return n.steady_s + n.load_probability * n.delay_s
    if n.service_s is not None:
        return n.service_s
    return n.reported_service_s or None


def _view(n: NodeState) -> NodeView:
    return NodeView(
        address=str(n.address),
        in_flight=n.in_flight,
        service_s=expected_service_s(n),
        load_probability=n.load_probability,
    )
