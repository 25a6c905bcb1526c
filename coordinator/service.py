"""The coordinator's behaviour behind the Thrift handler: rounds, shards, membership, status.

Glue between the wire types and the pure core (registry, policies, executor, shard store):
it builds one ShardTask per shard, hands them to the executor, and turns the outcomes
into a RoundResult in shard order. Errors are raised as the core's own exceptions; the
handler maps them to the IDL's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from coordinator.executor import (
    Counters,
    NoNodeFinished,
    RoundExecutor,
    TaskOutcome,
    fewer_collections,
)
from coordinator.node_calls import NodeTask
from coordinator.policies import Policy, make_policy, policy_name
from coordinator.registry import Registry, RegistryFull
from coordinator.validation import RequestError, check_node_address, check_request
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from idl.gen.ttypes import (
    ClusterStatus,
    NodeStatus,
    RoundRequest,
    RoundResult,
    ShardRef,
    ShardTask,
    TaskRecord,
)
from idl.weights import weights_digest
from runtime.auth import authorize
from runtime.events import log_event
from runtime.shard_store import ShardStore

# Registrations past this many known nodes are refused: each costs a heartbeat per interval.
DEFAULT_MAX_NODES = 4096


class MissingShards(Exception):
    """The coordinator lacks these shards: the client uploads them and asks again."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__(
            f"coordinator lacks {len(digests)} shard(s), first {digests[0]}: "
            "upload them with put_shard and retry"
        )
        self.digests = digests


class CoordinatorService:
    """Everything the coordinator does, independent of how calls arrive."""

    def __init__(
        self,
        registry: Registry,
        store: ShardStore[bytes],
        executor: RoundExecutor,
        *,
        policy: str,
        seed: int = 1,
        token: str = "",
        address: str = "",
        max_nodes: int = DEFAULT_MAX_NODES,
        max_task_work: int = DEFAULT_MAX_TASK_WORK,
    ) -> None:
        self.registry = registry
        self.store = store
        self.executor = executor
        self.counters: Counters = executor.counters
        self.policy = policy_name(policy)
        self.address = address
        self.max_nodes = max_nodes
        self.max_task_work = max_task_work
        self.seed = seed
        self._token = token
        self._policies: dict[str, Policy] = {}
        self._lock = threading.Lock()
        # Levels status() reports beside the counters, read when asked (serving adds its own).
        self.levels: dict[str, Callable[[], int]] = {}

    def authorize(self, token: str | None) -> None:
        """runtime.auth.Denied unless no token is configured or `token` matches."""
        authorize(self._token, token, "the coordinator")

    def policy_for(self, name: str) -> Policy:
        """One long-lived, seeded instance per policy name (round-robin keeps its place)."""
        name = name or self.policy
        with self._lock:
            if name not in self._policies:
                self._policies[name] = make_policy(name, self.seed)
            return self._policies[name]

    def register_node(self, host: str, port: int, token: str = "") -> None:
        """Know (or refresh) a node; RequestError for a bad address or a full registry."""
        self.authorize(token)
        address = check_node_address(host, port)
        try:
            self.registry.register(address, max_nodes=self.max_nodes)
        except RegistryFull as exc:
            self.counters.add("registrations_refused")
            raise RequestError(f"register_node: {exc}") from None
        self.counters.add("registrations")

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        self.authorize(token)
        self.store.put(digest, data)  # ShardError is a RequestError for the handler
        self.counters.add("shards_received")

    def run_round(self, request: RoundRequest) -> RoundResult:
        """Run every shard task of the round; results and records in shard order."""
        self.authorize(request.token)
        deadline_s, name = check_request(request, self.max_task_work)
        shards = request.shards
        work = self._shard_tasks(request)
        policy = self.policy_for(name)
        label = f"{request.job_id or '-'}/{request.round}"
        log_event("round_start", round=label, shards=len(work), policy=policy.name,
                  deadline_s=deadline_s, nodes_alive=self.registry.n_alive())
        began = time.monotonic()
        with fewer_collections:  # the records too: 10,000 of them are as many allocations
            try:
                outcomes = self.executor.run(work, policy, deadline_s, label=label)
            except Exception as exc:
                self.counters.add("rounds_failed")
                log_event("round_failed", round=label, reason=exc)
                raise
            wall_s = time.monotonic() - began
            self.counters.add("rounds")
            log_event("round_done", round=label, wall_s=wall_s,
                      attempts=sum(o.attempts for o in outcomes))
            return RoundResult(
                results=[o.value for o in outcomes],
                records=[_record(o, shards[o.index].name) for o in outcomes],
                wall_s=wall_s,
                coordinator=self.address,
                policy=policy.name,
            )

    def held_shards(self, refs: Sequence[ShardRef]) -> list[bytes]:
        """Each shard's bytes, checked against its ref; MissingShards for any not held."""
        missing = self.store.missing([r.digest or "" for r in refs])
        if missing:
            raise MissingShards(missing)
        held = []
        for i, ref in enumerate(refs):
            data = self.store.get(ref.digest)
            if data is None:  # evicted since the check just above
                raise MissingShards([ref.digest])
            if ref.n_bytes and ref.n_bytes != len(data):
                raise RequestError(
                    f"shards[{i}] ({ref.name}): n_bytes says {ref.n_bytes}, "
                    f"the uploaded shard has {len(data)}"
                )
            held.append(data)
        return held

    def _shard_tasks(self, request: RoundRequest) -> list[NodeTask]:
        """One task per shard, with its bytes; MissingShards for any the store lacks.

        The tasks name the round's weights by digest, computed here once; the executor's
        call_node sends the weights themselves to each node once (coordinator.node_calls).
        """
        held = self.held_shards(request.shards)
        digest = weights_digest(request.weights)
        work = []
        for i, (ref, data) in enumerate(zip(request.shards, held, strict=True)):
            task = ShardTask(
                job_id=request.job_id or "",
                round=request.round,
                shard_index=i,
                shard=ref,
                weights=[],
                weights_digest=digest,
                config=request.config,
                token=self._token or request.token or "",
            )
            work.append(NodeTask(task, data, request.weights))  # passed on untouched
        return work

    def status(self) -> ClusterStatus:
        nodes = [NodeStatus(**asdict(n)) for n in self.registry.snapshot()]
        counters = self.counters.as_dict()
        counters["nodes_alive"] = sum(n.alive for n in nodes)
        counters["shards_cached"] = len(self.store)
        for name, level in self.levels.items():
            counters[name] = level()
        return ClusterStatus(nodes=nodes, policy=self.policy, counters=counters)


def _record(outcome: TaskOutcome, shard_name: str) -> TaskRecord:
    result = outcome.value
    return TaskRecord(
        shard_index=outcome.index, shard=shard_name, node=outcome.node,
        attempts=outcome.attempts, failures=list(outcome.failures), declined=outcome.declined,
        timings=result.timings, start_s=outcome.start_s, end_s=outcome.end_s,
        n_samples=result.n_samples, train_loss=result.train_loss, train_error=result.train_error,
    )


__all__ = ["CoordinatorService", "MissingShards", "RequestError", "NoNodeFinished"]
