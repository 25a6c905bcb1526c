"""A compute node's behaviour, free of Thrift: admit, queue, delay, train, report.

The order of a task is fixed by the contract: token, weights, hyperparameters,
shard, fit of shard to model and the work bound, then the load simulation (decline,
then delay), then training on one of `workers` slots. Requests that are wrong fail
before the node spends any time on them; the load draws happen only for tasks that
could run. A task's timeout bounds all of it, from receipt: queueing, the load delay
and training, which stops between steps once the budget is spent (OutOfTime).

A task that names its weights by digest may arrive before them: the coordinator sends a
node's other tasks of a round as soon as it has sent the weights (put_weights) on another
connection, not once they are answered, so a small train can overtake a large upload.
Such a task waits for the digest to appear, at most `weights_wait_s` and half its own
budget (the rest is left for the coordinator's recovery), then answers MissingWeights:
a node that really lacks them (restarted, given other weights since) still says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from compute_node.load import LoadSimulator
from compute_node.poison import Poisoner
from compute_node.shards import Shard
from compute_node.stats import LoadSnapshot, NodeStats
from compute_node.trainer import (
    InvalidTask,
    OutOfTime,
    TrainOutput,
    TrainSettings,
    check_fit,
    check_settings,
    check_work,
    params_from_arrays,
    run_training,
)
from compute_node.weights_cache import WeightsCache
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from runtime.auth import authorize
from runtime.events import log_event
from runtime.shard_store import ShardStore, check_digest

WEIGHTS_WAIT_S = 2.0  # default wait of a task for weights named by digest (module docstring)


class Busy(RuntimeError):
    """The node turned the task away; the caller should try elsewhere or later."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MissingShard(LookupError):
    """The node has no shard with this digest; the caller should put_shard it."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"shard {digest} is not on this node; send it with put_shard and retry"
        )
        self.digest = digest


class MissingWeights(LookupError):
    """The node holds no weights under this digest; the caller should put_weights them."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"weights {digest} are not on this node (it keeps the latest weights it was "
            "given, older ones only while a task uses them); send them with put_weights "
            "and retry"
        )
        self.digest = digest


@dataclass(frozen=True)
class Task:
    """One shard task with its weights decoded to arrays, or named by `weights_digest`."""

    digest: str
    shard_name: str
    weights: Sequence[np.ndarray]  # empty: the weights the node holds under weights_digest
    settings: TrainSettings
    may_decline: bool = False
    timeout_s: float = 0.0
    weights_digest: str = ""


@dataclass(frozen=True)
class TaskReport:
    output: TrainOutput
    load_delay_s: float
    wait_s: float
    total_s: float


class ComputeNodeCore:
    """Thread-safe: the server calls it from one thread per connection."""

    def __init__(
        self,
        store: ShardStore[Shard],
        load: LoadSimulator,
        *,
        workers: int = 1,
        token: str = "",
        max_task_work: int = DEFAULT_MAX_TASK_WORK,
        crash: Callable[[], None] | None = None,
        weights_wait_s: float = WEIGHTS_WAIT_S,
        poison: Poisoner | None = None,
    ) -> None:
        self.store = store
        self.load = load
        self.stats = NodeStats()
        self.max_task_work = max_task_work
        self._slots = threading.BoundedSemaphore(workers)
        self._token = token
        self._crash = crash or _exit_abruptly
        self.weights = WeightsCache()
        self.weights_wait_s = weights_wait_s
        self.poison = poison  # --poison: every trained delta replaced (compute_node.poison)

    def authorize(self, token: str | None) -> None:
        """runtime.auth.Denied unless the node has no token or `token` matches it."""
        authorize(self._token, token, "this node")

    def load_snapshot(self) -> LoadSnapshot:
        return self.stats.snapshot()

    def put_shard(self, digest: str, data: bytes) -> None:
        dataset = self.store.put(digest, data)
        log_event("shard_stored", digest=digest[:12], rows=dataset.n_rows, bytes=len(data))

    def put_weights(self, digest: str, actual: str, arrays: Sequence[np.ndarray]) -> None:
        """Hold a round's weights under `digest`, which must be `actual` (their digest)."""
        check_digest(digest)
        if digest != actual:
            raise InvalidTask(f"put_weights: the weights hash to {actual}, not to {digest}")
        params_from_arrays(arrays)  # InvalidTask unless they are an MLP's four tensors
        self.weights.put(digest, arrays)
        log_event("weights_stored", digest=digest[:12],
                  bytes=sum(int(a.nbytes) for a in arrays))

    def train(self, task: Task) -> TaskReport:
        """Run one task from receipt to reply; raises the errors declared above."""
        received = time.perf_counter()
        # `weights` (a local until the task ends) keeps held weights in the cache meanwhile.
        weights = self._weights_of(task)
        params = params_from_arrays(weights)
        check_settings(task.settings, params.d)
        _check_timeout(task.timeout_s)
        check_digest(task.digest)
        shard = self.store.get(task.digest)
        if shard is None:
            raise MissingShard(task.digest)
        check_fit(params, shard, task.shard_name or f"shard {task.digest[:12]}")
        check_work(params, shard.n_rows, task.settings, self.max_task_work)
        if self.load.declines(task.may_decline):
            self.stats.declined()
            raise Busy(
                "node is loaded and declined the task; try another node",
                retry_after_s=max(0.05, self.stats.snapshot().recent_service_s),
            )
        self.stats.started()
        total_s: float | None = None
        try:
            report = self._run_accepted(task, params, shard, received)
            total_s = report.total_s
            return report
        finally:
            self.stats.finished(total_s)

    def _weights_of(self, task: Task) -> Sequence[np.ndarray]:
        """The task's own weights, or those held under its weights_digest, waited for if
        still on their way (module docstring); MissingWeights when they do not come."""
        if task.weights or not task.weights_digest:
            return task.weights  # none at all: params_from_arrays names what is missing
        check_digest(task.weights_digest)
        held = self.weights.get(task.weights_digest)
        if held is not None:
            return held
        wait_s = self.weights_wait_s
        if task.timeout_s > 0:
            wait_s = min(wait_s, task.timeout_s / 2)
        started = time.perf_counter()
        held = self.weights.wait_for(task.weights_digest, wait_s)
        waited_s = time.perf_counter() - started
        if held is None:
            log_event("weights_missing", shard=task.shard_name,
                      weights=task.weights_digest[:12], waited_s=waited_s)
            raise MissingWeights(task.weights_digest)
        log_event("weights_waited", shard=task.shard_name, weights=task.weights_digest[:12],
                  waited_s=waited_s)
        return held

    def _run_accepted(self, task, params, shard, received: float) -> TaskReport:
        wait_limit = task.timeout_s if task.timeout_s > 0 else None
        if not self._slots.acquire(timeout=wait_limit):
            self.stats.declined()
            raise Busy(
                f"no free worker within the task's timeout of {task.timeout_s:g}s",
                retry_after_s=max(0.05, self.stats.snapshot().recent_service_s),
            )
        try:
            wait_s = time.perf_counter() - received
            delay_s = self.load.load_delay_s()
            if delay_s > 0:
                # A simulated load delay never outlasts the task's budget either.
                time.sleep(delay_s if wait_limit is None else
                           max(0.0, min(delay_s, received + wait_limit - time.perf_counter())))
            try:
                output = run_training(params, shard, task.settings, *_time_left(task, received))
            except OutOfTime as exc:
                log_event("task_out_of_time", shard=task.shard_name, budget_s=exc.budget_s,
                          wait_s=wait_s, load_delay_s=delay_s,
                          total_s=time.perf_counter() - received)
                raise
        finally:
            self._slots.release()
        if self.poison is not None:
            output = replace(output, delta=self.poison.apply(output.delta, task.digest,
                                                             params.tensors()))
        if self.load.crashes():
            log_event("injected_crash", shard=task.shard_name, digest=task.digest[:12])
            self._crash()
        extra_s = self.load.config.extra_latency_s
        if extra_s > 0:
            time.sleep(extra_s)
        total_s = time.perf_counter() - received
        log_event(
            "task_done",
            shard=task.shard_name,
            rows=output.n_samples,
            load_delay_s=delay_s,
            wait_s=wait_s,
            compute_s=output.compute_s,
            total_s=total_s,
        )
        return TaskReport(output=output, load_delay_s=delay_s, wait_s=wait_s, total_s=total_s)


def _time_left(task: Task, received: float) -> tuple[float | None, float | None]:
    """(time limit for training, whole budget) of a task received at `received`.

    No timeout: no limit. A budget already spent (queue, load delay) leaves a limit so
    small that training stops before its first step.
    """
    if task.timeout_s <= 0:
        return None, None
    left = received + task.timeout_s - time.perf_counter()
    return max(left, 1e-9), task.timeout_s


def _check_timeout(timeout_s: float) -> None:
    if not (timeout_s >= 0 and timeout_s < float("inf")):
        raise InvalidTask(f"timeout_s must be a finite number >= 0 (0 = none), got {timeout_s}")


def _exit_abruptly() -> None:
    """Die as a crashed machine would: no reply, no cleanup, no flush beyond stderr."""
    os._exit(1)
