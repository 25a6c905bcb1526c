"""Prometheus metrics for a compute node, on an optional `--metrics-port`.

Gauges and counters are read from the node's own load() at scrape time, so they can
never disagree with what the coordinator sees; the service-time histogram is fed by a
handler subclass that observes every train() reply. Metrics live in their own
registry (no process-wide globals), served over HTTP by prometheus-client.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from compute_node.handler import ComputeNodeHandler
from compute_node.node import ComputeNodeCore
from compute_node.serving import NodeServing
from idl.gen import ttypes
from idl.gen.ttypes import ShardTask, TaskResult
from runtime.metrics import Figure, ProcessMetrics, figure_families

SERVICE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_OUTCOMES = ((ttypes.NodeBusy, "declined"), (ttypes.ShardMissing, "shard_missing"),
             (ttypes.InvalidRequest, "invalid"), (ttypes.DatasetError, "dataset_error"),
             (ttypes.Unauthorized, "unauthorized"), (ttypes.DeadlineExceeded, "deadline_exceeded"))
# The node's load() figures, read at scrape time.
_LOAD_FIGURES: tuple[Figure, ...] = (
    (GaugeMetricFamily, "tasks_in_flight", "Tasks accepted and not yet replied to.",
     "tasks_in_flight"),
    (CounterMetricFamily, "tasks_done", "Tasks trained and replied to.", "tasks_done"),
    (CounterMetricFamily, "tasks_declined", "Tasks declined (loaded, or no free worker in time).",
     "tasks_declined"),
    (GaugeMetricFamily, "recent_service_seconds",
     "Moving average of accepted tasks' service time.", "recent_service_s"),
    (GaugeMetricFamily, "shards_cached",
     "Distinct shards this node can train on without an upload.", "shards_cached"),
    (GaugeMetricFamily, "load_probability", "Configured probability of simulated load.",
     "load_probability"),
)


class NodeMetrics(ProcessMetrics):
    """The node's metrics registry: load figures on scrape, plus a service-time histogram."""

    def __init__(self) -> None:
        super().__init__()
        self.service_s = Histogram(
            "fedcluster_node_service_seconds",
            "Node-measured time of each completed train task, request received to reply.",
            buckets=SERVICE_BUCKETS_S, registry=self.registry,
        )
        self.train_calls = Counter(
            "fedcluster_node_train_calls", "train() calls by outcome.", ["outcome"],
            registry=self.registry,
        )

    def watch(self, handler: ComputeNodeHandler) -> None:
        """Report `handler.node_load()` on every scrape."""
        self.on_scrape(
            lambda: figure_families("fedcluster_node", _LOAD_FIGURES, handler.node_load())
        )


class MeteredNodeHandler(ComputeNodeHandler):
    """ComputeNodeHandler that records each train() outcome and service time."""

    def __init__(
        self, core: ComputeNodeCore, metrics: NodeMetrics, address: str = "",
        serving: NodeServing | None = None,
    ) -> None:
        super().__init__(core, address, serving)
        self._metrics = metrics
        metrics.watch(self)

    def train(self, task: ShardTask) -> TaskResult:
        try:
            result = super().train(task)
        except Exception as exc:
            outcome = next((name for cls, name in _OUTCOMES if isinstance(exc, cls)), "error")
            self._metrics.train_calls.labels(outcome).inc()
            raise
        self._metrics.train_calls.labels("ok").inc()
        self._metrics.service_s.observe(result.timings.total_s)
        return result
