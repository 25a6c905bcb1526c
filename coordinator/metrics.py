"""Prometheus metrics for the coordinator, on an optional `--metrics-port`.

Per-node figures and the counters are read from the service's status() at scrape
time, the same numbers `python -m client status` prints; the round-duration histogram
is fed by a handler subclass that times each run_round. Own registry, no globals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordinator.handler import CoordinatorHandler
from coordinator.service import CoordinatorService
from coordinator.serving import Serving
from idl.gen.ttypes import ClusterStatus, RoundRequest, RoundResult, ShardMissing
from runtime.metrics import Figure, ProcessMetrics, per_node_families

ROUND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Always exported (0 until they happen), so dashboards need no special cases.
KNOWN_COUNTERS = ("rounds", "rounds_failed", "tasks", "retries", "failures", "declined")
# Each node's figures in status(), labelled with its address.
_NODE_FIGURES: tuple[Figure, ...] = (
    (GaugeMetricFamily, "node_alive", "1 if the node answers, 0 if marked dead.", "alive"),
    (GaugeMetricFamily, "node_tasks_in_flight", "Tasks this coordinator has on the node now.",
     "tasks_in_flight"),
    (CounterMetricFamily, "node_tasks_done", "Tasks the node completed for this coordinator.",
     "tasks_done"),
    (CounterMetricFamily, "node_failures", "Calls to the node that failed.", "failures"),
    (GaugeMetricFamily, "node_load_probability", "Load probability the node reports.",
     "load_probability"),
    (GaugeMetricFamily, "node_last_seen_seconds",
     "Seconds since the node last answered (-1: never).", "last_seen_s_ago"),
)


class CoordinatorMetrics(ProcessMetrics):
    """The coordinator's metrics registry: status() on scrape plus a round histogram."""

    def __init__(self) -> None:
        super().__init__()
        self.round_s = Histogram(
            "fedcluster_coordinator_round_seconds",
            "Wall time of run_round calls, by outcome (ok, failed, shard_missing).", ["outcome"],
            buckets=ROUND_BUCKETS_S, registry=self.registry,
        )

    def watch(self, service: CoordinatorService) -> None:
        """Report `service.status()` on every scrape."""
        self.on_scrape(lambda: _status_families(service.status()))


def _status_families(status: ClusterStatus) -> Iterator[Metric]:
    """ClusterStatus as metric families: per-node figures, then levels and counters."""
    yield from per_node_families("fedcluster_coordinator", _NODE_FIGURES, status.nodes or [])
    counters = dict.fromkeys(KNOWN_COUNTERS, 0) | dict(status.counters or {})
    for name in ("nodes_alive", "shards_cached", "models_cached",
                 "predict_rows_held"):  # levels, not counts
        if name in counters:
            yield GaugeMetricFamily(f"fedcluster_coordinator_{name}", name.replace("_", " "),
                                    value=counters.pop(name))
    for name, value in sorted(counters.items()):
        yield CounterMetricFamily(f"fedcluster_coordinator_{name}",
                                  f"Coordinator counter '{name}'.", value=value)


class MeteredCoordinatorHandler(CoordinatorHandler):
    """CoordinatorHandler that times every run_round call into the round histogram."""

    def __init__(
        self, service: CoordinatorService, metrics: CoordinatorMetrics,
        serving: Serving | None = None,
    ) -> None:
        super().__init__(service, serving)
        self._metrics = metrics
        metrics.watch(service)

    def run_round(self, request: RoundRequest) -> RoundResult:
        began = time.perf_counter()
        outcome = "failed"
        try:
            result = super().run_round(request)
            outcome = "ok"
            return result
        except ShardMissing:
            outcome = "shard_missing"  # the client uploads and asks again: not a failure
            raise
        finally:
            self._metrics.round_s.labels(outcome).observe(time.perf_counter() - began)
