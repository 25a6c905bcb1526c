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

Work stealing: a task that carries a task_id can be taken back with cancel(task_id) until
it starts training: while it waits for a worker or sleeps its load delay (the delay counts
as not started). Its train call then answers Cancelled and the task runs nothing; the
coordinator sends it to an idle node. A cancel that comes too late (training started, the
task ended) or names no task held here changes nothing and answers False.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

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
MAX_TASK_ID_CHARS = 128
SLOT_POLL_S = 0.02  # a cancellable task waiting for a worker looks for its cancel this often


class Busy(RuntimeError):
    """The node turned the task away; the caller should try elsewhere or later."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Cancelled(RuntimeError):
    """The task was taken back with cancel() before it started training."""


@dataclass(eq=False)
class _Pending:
    """A cancellable task from acceptance until it starts training (or is cancelled)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False


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
    task_id: str = ""  # "" = not cancellable


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
        self._pending: dict[str, _Pending] = {}  # cancellable tasks not yet training
        self._pending_lock = threading.Lock()
        self.n_cancelled = 0

    def authorize(self, token: str | None) -> None:
        """runtime.auth.Denied unless the node has no token or `token` matches it."""
        authorize(self._token, token, "this node")

    def load_snapshot(self) -> LoadSnapshot:
        return self.stats.snapshot()

    def cancel(self, task_id: str) -> bool:
        """Take back a task that has not started training; True if it will never run.

        Bounded (one dict lookup) and idempotent: a repeated cancel of a task still held
        answers True again; a task started, ended or never received answers False.
        """
        with self._pending_lock:
            pending = self._pending.get(task_id)
            if pending is None or pending.started:
                return False
            if not pending.cancelled.is_set():
                pending.cancelled.set()
                self.n_cancelled += 1
        log_event("task_cancel_accepted", task_id=task_id[:MAX_TASK_ID_CHARS])
        return True

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
        if len(task.task_id) > MAX_TASK_ID_CHARS:
            raise InvalidTask(f"task_id: at most {MAX_TASK_ID_CHARS} characters")
        if self.load.declines(task.may_decline):
            self.stats.declined()
            raise Busy(
                "node is loaded and declined the task; try another node",
                retry_after_s=max(0.05, self.stats.snapshot().recent_service_s),
            )
        pending = self._hold(task.task_id)
        self.stats.started()
        total_s: float | None = None
        try:
            report = self._run_accepted(task, params, shard, received, pending)
            total_s = report.total_s
            return report
        finally:
            self.stats.finished(total_s)
            if pending is not None:
                with self._pending_lock:
                    self._pending.pop(task.task_id, None)

    def _hold(self, task_id: str) -> _Pending | None:
        """Make an accepted task cancellable under its id (None: no id, or one in use)."""
        if not task_id:
            return None
        with self._pending_lock:
            if task_id in self._pending:
                return None  # the first task under this id keeps it
            pending = self._pending[task_id] = _Pending()
            return pending

    def _start(self, task: Task, pending: _Pending | None) -> None:
        """The task starts training now, unless it was cancelled first (Cancelled)."""
        if pending is None:
            return
        with self._pending_lock:
            if not pending.cancelled.is_set():
                pending.started = True
                return
        log_event("task_cancelled", shard=task.shard_name, task_id=task.task_id)
        raise Cancelled(f"task {task.task_id} was cancelled before it started training")

    def _acquire_slot(self, wait_limit: float | None, pending: _Pending | None) -> bool:
        """A worker slot within `wait_limit` seconds; a cancel ends the wait (no slot held)."""
        if pending is None:
            return self._slots.acquire(timeout=wait_limit)
        end = None if wait_limit is None else time.perf_counter() + wait_limit
        while not pending.cancelled.is_set():
            step = SLOT_POLL_S if end is None else min(SLOT_POLL_S, end - time.perf_counter())
            if step <= 0:
                return False
            if self._slots.acquire(timeout=step):
                return True
        return False

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

    def _run_accepted(self, task, params, shard, received: float,
                      pending: _Pending | None = None) -> TaskReport:
        wait_limit = task.timeout_s if task.timeout_s > 0 else None
        if not self._acquire_slot(wait_limit, pending):
            self._start(task, pending)  # raises Cancelled when that ended the wait
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
                sleep_s = (delay_s if wait_limit is None else
                           max(0.0, min(delay_s, received + wait_limit - time.perf_counter())))
                if pending is None:
                    time.sleep(sleep_s)
                else:
                    pending.cancelled.wait(sleep_s)  # a cancel ends the delay: nothing ran
            self._start(task, pending)
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
