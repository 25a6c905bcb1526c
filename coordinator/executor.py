"""Round execution: every shard task in flight at once, retried elsewhere, bounded by a deadline.

The executor knows nothing of Thrift. It takes a policy and a `call_node(address, task,
timeout_s, may_decline)` function that returns the task's result or raises one of the
errors below, so the whole retry logic can be exercised with plain functions in tests.

Per task: pick a node (policy, under one dispatch lock so concurrent picks see each other's
in-flight counts), call it with timeout = min(task timeout, time left), and on
- NodeBusy: try another node; when every healthy node is busy, back off and try again;
- NodeFailure: mark the node dead, exclude it for this task, retry elsewhere
  (at most `max_attempts` failures per task);
- TaskRejected (the request's own fault): fail the whole round with that error;
- OutOfTime (the node stopped the task at its time budget): the node is healthy and
  the task may simply be too big for the budget, so it gets ONE more try on another node
  (that one may be faster or less loaded) and then fails the round, naming the budget,
  instead of burning the budget on every node (--max-attempts does not apply);
- ConfigurationError (a node refused the coordinator's token): fail the round at once.
With no healthy node it waits for one, until the round's deadline: then NoNodeFinished.

Stragglers: once half the tasks are done, a task whose current attempt has run longer than
`straggler_factor` times the median task time (and at least `straggler_min_s` more) is
started again on an idle node; the first result wins and the other is dropped (results are
identical by determinism, so which one wins changes nothing but time).

Work stealing (with a `cancel_node(address, task, timeout_s) -> bool`): when a node is idle
(nothing in flight) while a task of the round has waited on a busy node longer than a limit
(coordinator.stealing.wait_limit_s: `steal_factor` times the round's median steady task
time or call overhead, at least `steal_min_s`) plus the idle node's expected service time,
the busy node is asked to cancel it (it answers True only if the task had not started
training: queued, or in its load delay); the task's runner, whose call then answers
TaskCancelledError, sends it to the idle node reserved for it. A task the node has started
gets, past DUPLICATE_FACTOR limits (at least DUPLICATE_MIN_S), a copy on the idle node
instead (first result wins; counted as a straggler too). A task every node declined
(load-aware), backing off before it asks again, is woken to ask an idle node at once, and
an idle node that declines is asked again at once (IDLE_REASKS times per backoff) rather
than the task queueing behind busy nodes. coordinator.stealing decides; counters steals,
steal_started, steal_duplicates, steal_wakes.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from coordinator.policies import Policy
from coordinator.registry import Registry
from coordinator.stealing import Steal, Waiting, plan_steals, wait_limit_s
from runtime.budget import OutOfTime
from runtime.events import log_event

MAX_WORKERS = 256
# Allocations between young collections while rounds run (default 700): see _FewerCollections.
ROUND_GC_THRESHOLD = 100_000
OUT_OF_TIME_TRIES = 2  # nodes a task may run out of its time budget on before the round fails
BUSY_BACKOFF_S = 0.05
# A decline is one draw of a node's load, not a promise of load for its whole service time:
# ask again soon. The node's retry_after hint is honoured only up to this.
MAX_BUSY_BACKOFF_S = 0.25
NO_NODE_POLL_S = 0.5
STRAGGLER_MIN_EXTRA_S = 10.0  # never re-run a task that is only a few seconds late
WATCH_TICK_S = 0.1
STEAL_FACTOR = 2.0  # see coordinator.stealing.wait_limit_s
STEAL_MIN_S = 0.05  # never take a task that has waited less than this
DUPLICATE_FACTOR = 4.0  # a started task is copied past this many wait limits ...
DUPLICATE_MIN_S = 0.5  # ... and never before this: a copy costs a node's time
PROBE_TRUST_S = 0.5  # a node's "started" is believed this long before it is asked again
CANCEL_TIMEOUT_S = 5.0
# How often tasks declined everywhere are offered to idle nodes (one per idle node each
# time): a decline is one draw, so an idle node is asked again soon, but never in a loop.
WAKE_TICK_S = 0.02
IDLE_REASKS = 8  # times a task asks idle nodes again at once after a decline, per backoff


class NodeBusyError(Exception):
    """The node declined the task (load simulation); it is healthy, just busy."""

    def __init__(self, message: str = "busy", retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NodeFailure(Exception):
    """The node could not run the task: refused, reset, timed out, died, or misbehaved."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TaskRejected(Exception):
    """The node rejected the task as invalid: the request is at fault, so the round fails."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class TaskCancelledError(Exception):
    """The node gave the task back unstarted (cancel): it ran nothing; send it elsewhere."""


class NoNodeFinished(Exception):
    """No node could finish a task before the deadline or within the attempts allowed."""


class ConfigurationError(NoNodeFinished):
    """The cluster is set up wrong (a node refused the coordinator's token): retrying won't help."""


class _Aborted(Exception):
    """Another task failed the round; this one stops quietly."""


@dataclass
class TaskOutcome:
    """How one task ended: its result and the story of its attempts."""

    index: int
    value: Any
    node: str
    attempts: int
    failures: list[str] = field(default_factory=list)
    start_s: float = 0.0  # since the round started
    end_s: float = 0.0
    declined: int = 0  # attempts a loaded node declined: not failures


class Counters:
    """Thread-safe named counters for status()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


CallNode = Callable[[str, Any, float, bool], Any]
CancelNode = Callable[[str, Any, float], bool]  # (node, task, timeout_s) -> taken back unstarted


class RoundExecutor:
    """Runs rounds of tasks over the nodes in a registry; one instance per coordinator."""

    def __init__(
        self,
        registry: Registry,
        call_node: CallNode,
        *,
        task_timeout_s: float = 300.0,
        max_attempts: int = 5,
        straggler_factor: float = 4.0,
        straggler_min_s: float = STRAGGLER_MIN_EXTRA_S,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        cancel_node: CancelNode | None = None,
        steal_factor: float = STEAL_FACTOR,
        steal_min_s: float = STEAL_MIN_S,
    ) -> None:
        self._registry = registry
        self._call_node = call_node
        self._task_timeout_s = task_timeout_s
        self._max_attempts = max_attempts
        self._straggler_factor = straggler_factor  # 0 turns re-execution off
        self._straggler_min_s = straggler_min_s
        self.counters = counters or Counters()
        self._clock = clock
        self._dispatch = threading.Lock()
        self._cancel_node = cancel_node  # None: no work stealing
        self._steal_factor = steal_factor
        self._steal_min_s = steal_min_s

    def run(
        self, tasks: Sequence[Any], policy: Policy, deadline_s: float, *, label: str = ""
    ) -> list[TaskOutcome]:
        """Run every task at once; outcomes in task order. Raises NoNodeFinished or TaskRejected."""
        if not tasks:
            return []
        with fewer_collections:
            return self._run(tasks, policy, deadline_s, label)

    def _run(
        self, tasks: Sequence[Any], policy: Policy, deadline_s: float, label: str
    ) -> list[TaskOutcome]:
        start = self._clock()
        slots = [_Slot() for _ in tasks]
        round_ = _Round(self, policy, start, start + deadline_s, deadline_s, label, slots)
        # First placements in task order, so a seeded policy places a fault-free round the
        # same way every time, whatever order the threads start in.
        first_nodes = [round_.reserve(set()) for _ in tasks]
        # A fixed set of workers takes task indices in order from one queue: a future per
        # task (and 256 threads handing the GIL around) cost more than the tasks' own calls.
        todo = deque(range(len(tasks)))
        workers = [
            threading.Thread(
                target=round_.work, args=(todo, tasks, first_nodes), name=f"task-{n}", daemon=True
            )
            for n in range(min(len(tasks), MAX_WORKERS))
        ]
        backups = cf.ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="backup")
        try:
            for worker in workers:
                worker.start()
            return self._watch(round_, tasks, backups)
        finally:
            round_.abort.set()
            if self._cancel_node is not None:
                for slot in round_.slots:  # end the backoffs that wait for a wake
                    slot.wake.set()
            self._release_untaken(todo, first_nodes)
            backups.shutdown(wait=False, cancel_futures=True)

    def _watch(
        self, round_: _Round, tasks: Sequence[Any], backups: cf.ThreadPoolExecutor
    ) -> list[TaskOutcome]:
        """Wait for every outcome, the first error or the deadline; start stragglers' backups."""
        last_look = self._clock()
        while True:
            # Tasks backing off while a node may be idle: look again soon (wake_tick).
            round_.progress.wait(WAKE_TICK_S if round_.backing_off else WATCH_TICK_S)
            round_.progress.clear()
            # O(1) per wake-up: tasks finish thousands of times a second at scale.
            if round_.errors:
                raise round_.errors[0]
            if round_.n_done == len(tasks):
                # every slot has its outcome once n_done counts them all
                return cast(list[TaskOutcome], [slot.outcome for slot in round_.slots])
            if round_.backing_off and self._cancel_node is not None:
                round_.wake_for_idle()
            if self._clock() - last_look < WATCH_TICK_S:
                continue
            last_look = self._clock()
            if self._clock() > round_.deadline + 1.0:
                n_left = sum(slot.outcome is None for slot in round_.slots)
                raise NoNodeFinished(
                    f"round deadline of {round_.deadline_s:g}s passed with {n_left} of "
                    f"{len(tasks)} tasks unfinished"
                )
            if self._straggler_factor > 0:
                for i in round_.stragglers(self._straggler_factor, self._straggler_min_s):
                    backups.submit(round_.run_backup, i, tasks[i])
            if self._cancel_node is not None:
                for steal in round_.steals(self._steal_factor, self._steal_min_s):
                    backups.submit(round_.steal, steal, tasks[steal.index])

    def _release_untaken(self, todo: deque[int], first_nodes: list[str | None]) -> None:
        """Free the in-flight slot each task no worker took still holds on its first node.

        Workers stop taking once abort is set; a task they took already sees abort and
        releases its own.
        """
        while True:
            try:
                i = todo.popleft()
            except IndexError:
                break
            node = first_nodes[i]
            if node is not None:
                self._registry.end_task(node, None)


class _FewerCollections:
    """Makes the cyclic garbage collector run less often while any round runs (they overlap).

    A round holds every result until it ends, so at the default threshold (a young
    collection every 700 allocations) the allocations of 10,000 tasks set off hundreds of
    collections walking the results gathered so far: about a sixth of the coordinator's CPU
    per task, measured. A young threshold of ROUND_GC_THRESHOLD makes that a handful, and
    the collector is never switched off: whatever happens (an exception, rounds that always
    overlap), cycles are still collected, at worst less often. The thresholds in force when
    the first round began come back when the last one ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rounds = 0
        self._saved: tuple[int, ...] = gc.get_threshold()

    def __enter__(self) -> None:
        with self._lock:
            if self._rounds == 0:
                self._saved = gc.get_threshold()
                if 0 < self._saved[0] < ROUND_GC_THRESHOLD:  # 0: collection turned off already
                    gc.set_threshold(ROUND_GC_THRESHOLD, *self._saved[1:])
            self._rounds += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._rounds -= 1
            if self._rounds == 0:
                gc.set_threshold(*self._saved)


fewer_collections = _FewerCollections()  # `with fewer_collections:` nests and overlaps


def _node_times(value: Any) -> tuple[float, float] | None:
    """(busy_s, load_delay_s) from a result's node-measured `timings`, if it carries them."""
    t: Any = getattr(value, "timings", None)  # None or odd values: AttributeError below
    try:
        busy_s = float(t.total_s) - float(t.wait_s)
        delay_s = float(t.load_delay_s)
    except (AttributeError, TypeError, ValueError):
        return None
    if not (0 <= delay_s <= busy_s < float("inf")):
        return None  # a node reporting nonsense teaches the scheduler nothing
    return busy_s, delay_s


@dataclass
class _Slot:
    """One task's shared state between its first runner and a possible backup."""

    outcome: TaskOutcome | None = None
    node: str | None = None  # where the current attempt of the first runner runs
    attempt_began: float | None = None
    backup: bool = False
    in_call: bool = False  # the first runner's attempt is in flight on `node`
    steal_to: str | None = None  # an idle node reserved for it while its cancel is asked
    probed_at: float | None = None  # when its node said it had started the current attempt
    backing_off: bool = False  # the first runner waits out a backoff (declined everywhere)
    steady_s: float | None = None  # the winning attempt's node time less queue and delay
    overhead_s: float | None = None  # its round trip less the node's own time
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Tries:
    """One runner's attempts at one task: counts, the nodes to avoid, the story so far."""

    failures: list[str]  # "host:port reason" per failed attempt, for records and errors
    failed: set[str]  # nodes excluded for this task (failed it, or the straggler's own)
    attempts: int = 0
    n_failed: int = 0
    n_declined: int = 0
    declined_last: bool = False  # a decline is not a failure: the next try is no retry
    out_of_time: list[str] = field(default_factory=list)  # nodes that stopped it at its budget
    busy: set[str] = field(default_factory=set)  # nodes that declined it since the last wait
    backoff_s: float = BUSY_BACKOFF_S
    start_s: float | None = None  # first attempt, since the round started
    backup: bool = False  # a second runner (straggler or duplicate), not the task's own
    idle_reasks: int = 0  # idle nodes asked again at once after declining (since the wait)

    @classmethod
    def for_runner(cls, backup: bool, avoid: str | None) -> _Tries:
        """A first runner starts clean; a backup starts by avoiding the straggler's node."""
        if backup:
            return cls(failures=[f"{avoid} straggler, re-run elsewhere"],
                       failed={avoid} if avoid else set(), backup=True)
        return cls(failures=[], failed=set())


@dataclass(eq=False)
class _Round:
    """The state one round's task threads share."""

    executor: RoundExecutor
    policy: Policy
    start: float
    deadline: float
    deadline_s: float
    label: str
    slots: list[_Slot]  # one per task, in task order
    abort: threading.Event = field(default_factory=threading.Event)
    # the last task finished or one failed: look now
    progress: threading.Event = field(default_factory=threading.Event)
    n_done: int = 0  # slots with an outcome (under done_lock)
    errors: list[BaseException] = field(default_factory=list)  # first-runner failures
    done_lock: threading.Lock = field(default_factory=threading.Lock)
    # first runners waiting out a backoff, in the order they began it (under done_lock)
    backing_off: dict[int, None] = field(default_factory=dict)

    def reserve(self, exclude: set[str]) -> str | None:
        """Pick a node and count the task in flight on it, atomically with other picks."""
        with self.executor._dispatch:
            choice = self.policy.pick(self.executor._registry.views(), exclude)
            if choice is None:
                return None
            self.executor._registry.begin_task(choice.address)
            return choice.address

    def stragglers(self, factor: float, min_extra_s: float) -> list[int]:
        """Tasks to start again elsewhere now (marks them so each is re-run at most once)."""
        durations = sorted(
            s.outcome.end_s - s.outcome.start_s for s in self.slots if s.outcome is not None
        )
        if not durations or 2 * len(durations) < len(self.slots):
            return []
        median = durations[len(durations) // 2]
        limit = max(factor * median, median + min_extra_s)
        now = self.executor._clock()
        views = self.executor._registry.views()
        out = []
        for i, slot in enumerate(self.slots):
            with slot.lock:
                if slot.outcome is not None or slot.backup or slot.attempt_began is None:
                    continue
                if now - slot.attempt_began <= limit:
                    continue
                if not any(v.in_flight == 0 and v.address != slot.node for v in views):
                    continue  # no idle node to race it on
                slot.backup = True
            out.append(i)
        return out

    def steals(self, factor: float, min_s: float) -> list[Steal]:
        """Tasks to take from busy nodes for idle ones now (coordinator.stealing decides).

        Each steal's target is counted in flight at once, under the dispatch lock, so
        policies picking meanwhile see it taken; the slot holds it until its runner or
        the steal itself lets it go.
        """
        ex = self.executor
        views = ex._registry.views()
        if not any(v.in_flight == 0 for v in views) or self.n_done == len(self.slots):
            return []
        steady = [s.steady_s for s in self.slots if s.steady_s is not None]
        overhead = [s.overhead_s for s in self.slots if s.overhead_s is not None]
        limit = wait_limit_s(steady, overhead, factor, min_s)
        now = ex._clock()
        waiting = []
        for i, slot in enumerate(self.slots):
            if slot.outcome is not None or not slot.in_call or slot.steal_to is not None:
                continue
            began, node = slot.attempt_began, slot.node
            if began is None or node is None:
                continue
            # a "started" answer is trusted for a while, then asked again: the task may
            # not have reached the node when it was asked
            started = (slot.probed_at is not None and slot.probed_at >= began
                       and now - slot.probed_at < max(limit, PROBE_TRUST_S))
            waiting.append(Waiting(i, node, now - began, started, slot.backup))
        if not waiting:
            return []
        out = []
        with ex._dispatch:
            # A started task is late only against the round's finished ones: with none
            # finished yet there is no measure of late (a poison task running out its
            # budget is tried on one more node by the out-of-time path, not copied too).
            duplicate_after = (max(DUPLICATE_FACTOR * limit, DUPLICATE_MIN_S) if steady
                               else math.inf)
            for steal in plan_steals(ex._registry.views(), waiting, limit, duplicate_after):
                slot = self.slots[steal.index]
                with slot.lock:
                    if slot.outcome is not None or not slot.in_call or slot.node != steal.source:
                        continue
                    if steal.duplicate:
                        if slot.backup:
                            continue
                        slot.backup = True
                    elif slot.steal_to is not None:
                        continue
                    else:
                        slot.steal_to = steal.target
                    ex._registry.begin_task(steal.target)
                out.append(steal)
        return out

    def wake_for_idle(self) -> None:
        """Wake tasks declined everywhere (backing off) to ask the idle nodes at once.

        O(nodes + tasks backing off): it runs every WAKE_TICK_S while any back off.
        """
        ex = self.executor
        with self.done_lock:
            backing_off = list(self.backing_off)
        with ex._dispatch:
            views = ex._registry.views()
            if not any(v.in_flight == 0 for v in views):
                return
            for steal in plan_steals(views, [], 0.0, 0.0, backing_off):
                slot = self.slots[steal.index]
                with slot.lock:
                    if (slot.outcome is not None or not slot.backing_off
                            or slot.steal_to is not None):
                        continue
                    slot.steal_to = steal.target
                    ex._registry.begin_task(steal.target)
                    slot.wake.set()
                ex.counters.add("steal_wakes")

    def steal(self, steal: Steal, task: Any) -> None:
        """Take a task from a busy node: cancel it there, or run a copy on the idle target."""
        ex = self.executor
        slot = self.slots[steal.index]
        if steal.duplicate:
            ex.counters.add("stragglers")  # its record says so: re-run elsewhere
            ex.counters.add("steal_duplicates")
            log_event("task_duplicated", round=self.label, shard=steal.index,
                      node=steal.source, to=steal.target)
            try:
                self._attempts(steal.index, task, steal.target, backup=True, avoid=steal.source)
            except Exception as exc:  # noqa: BLE001 - the first runner is still going
                log_event("backup_failed", round=self.label, shard=steal.index, reason=exc)
            finally:
                self.progress.set()
            return
        assert ex._cancel_node is not None
        try:
            taken = ex._cancel_node(steal.source, task, CANCEL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a failed cancel leaves the task where it is
            log_event("cancel_failed", round=self.label, shard=steal.index, node=steal.source,
                      reason=exc)
            taken = False
        if taken:
            ex.counters.add("steals")
            log_event("task_stolen", round=self.label, shard=steal.index, node=steal.source,
                      to=steal.target)
            return  # its runner's call answers TaskCancelledError and takes the target
        ex.counters.add("steal_started")
        with slot.lock:
            slot.probed_at = ex._clock()
            target, slot.steal_to = slot.steal_to, None
        if target is not None:
            ex._registry.end_task(target, None)

    def _end_attempt(self, index: int, backup: bool) -> str | None:
        """The first runner's attempt is over: the idle node a steal reserved for it, if any."""
        if backup:
            return None
        slot = self.slots[index]
        with slot.lock:
            slot.in_call = False
            target, slot.steal_to = slot.steal_to, None
        return target

    def work(
        self, todo: deque[int], tasks: Sequence[Any], first_nodes: list[str | None]
    ) -> None:
        """One worker: run tasks from `todo` until it is empty or the round is over."""
        while not self.abort.is_set():
            try:
                i = todo.popleft()
            except IndexError:
                return
            self.run_task(i, tasks[i], first_nodes[i])

    def run_task(self, index: int, task: Any, node: str | None) -> None:
        """The first runner of a task; a failure that fails the round goes to self.errors."""
        try:
            self._attempts(index, task, node, backup=False)
        except Exception as exc:
            # A backup that already won makes this runner's failure moot.
            if self.slots[index].outcome is None and not isinstance(exc, _Aborted):
                with self.done_lock:
                    self.errors.append(exc)
                self.progress.set()

    def run_backup(self, index: int, task: Any) -> None:
        """A second runner for a straggler; its errors never fail the round."""
        slot = self.slots[index]
        self.executor.counters.add("stragglers")
        log_event("task_straggler", round=self.label, shard=index, node=slot.node)
        try:
            self._attempts(index, task, None, backup=True, avoid=slot.node)
        except Exception as exc:  # noqa: BLE001 - the first runner is still going
            log_event("backup_failed", round=self.label, shard=index, reason=exc)
        finally:
            self.progress.set()

    def _finish(self, index: int, outcome: TaskOutcome) -> bool:
        """Record the first result for a task; False if another runner got there first."""
        slot = self.slots[index]
        with slot.lock:
            if slot.outcome is not None:
                return False
            slot.outcome = outcome
        with self.done_lock:
            self.n_done += 1
            last = self.n_done == len(self.slots)
        if last:  # the watcher ticks for everything else: no wake-up per task
            self.progress.set()
        return True

    def _attempts(
        self, index: int, task: Any, node: str | None, *, backup: bool, avoid: str | None = None
    ) -> None:
        """Try nodes until one returns the task's result; raise what fails the round."""
        tries = _Tries.for_runner(backup, avoid)
        if not backup:
            self.executor.counters.add("tasks")
        while True:
            node = self._node_for_attempt(index, tries, node, avoid)
            if node is None:
                continue  # waited for one
            began = self._begin_attempt(tries, index, node, backup)
            timeout_s = max(min(self.executor._task_timeout_s, self.deadline - began), 0.001)
            error: BaseException | None = None
            try:
                value = self.executor._call_node(node, task, timeout_s, self.policy.may_decline)
            except BaseException as exc:  # noqa: BLE001 - sorted below, once the slot is told
                error = exc
            target = self._end_attempt(index, backup)
            if target is not None and not isinstance(error, TaskCancelledError):
                self.executor._registry.end_task(target, None)  # the steal came too late
                target = None
            if error is None:
                self._succeeded(index, tries, node, value, began, backup)
                return
            if isinstance(error, TaskCancelledError):
                self._cancelled(index, tries, node, target)
                node = target  # the idle node reserved for it (None: pick one)
                continue
            if isinstance(error, NodeBusyError):
                self._declined(index, tries, node, error)
            elif isinstance(error, NodeFailure):
                self._failed(index, tries, node, error)
            elif isinstance(error, OutOfTime):
                self._out_of_time(index, tries, node, error, timeout_s)
            else:
                self.executor._registry.end_task(node, None)
                raise error
            node = None

    def _node_for_attempt(
        self, index: int, tries: _Tries, node: str | None, avoid: str | None
    ) -> str | None:
        """The node for the next attempt; None after waiting for one. Raises when the task ends."""
        if node is None and not tries.backup:
            node = self._take_woken(index)  # an idle node a steal woke it for
        if self.abort.is_set() or self.slots[index].outcome is not None:
            if node is not None:
                self.executor._registry.end_task(node, None)
            raise _Aborted()
        remaining = self.deadline - self.executor._clock()
        if remaining <= 0:
            if node is not None:
                self.executor._registry.end_task(node, None)
            raise self._deadline_error(index, tries.failures)
        if node is None:
            node = self.reserve(tries.failed | tries.busy)
        if node is None:
            tries.backoff_s = self._wait_for_node(
                tries.failed, tries.busy, tries.backoff_s, remaining, avoid,
                None if tries.backup else index,
            )
            tries.idle_reasks = 0
        return node

    def _begin_attempt(self, tries: _Tries, index: int, node: str, backup: bool) -> float:
        """Count the attempt (a try after a decline is no retry); return when it began."""
        tries.attempts += 1
        if tries.attempts > 1 and not tries.declined_last:
            self.executor.counters.add("retries")
        tries.declined_last = False
        if tries.start_s is None:
            tries.start_s = self.executor._clock() - self.start
        began = self.executor._clock()
        if not backup:
            slot = self.slots[index]
            with slot.lock:
                slot.node, slot.attempt_began, slot.in_call = node, began, True
        return began

    def _take_woken(self, index: int) -> str | None:
        """The idle node a steal reserved for this task while it backed off (or None)."""
        slot = self.slots[index]
        with slot.lock:
            target, slot.steal_to = slot.steal_to, None
        return target

    def _cancelled(self, index: int, tries: _Tries, node: str, target: str | None) -> None:
        """The node gave the task back unstarted (a steal): no failure, no retry counted."""
        self.executor._registry.end_task(node, None)
        tries.declined_last = True
        log_event("task_moved", round=self.label, shard=index, node=node, to=target)

    def _declined(self, index: int, tries: _Tries, node: str, exc: NodeBusyError) -> None:
        """A loaded node turned the task away: it stays healthy; ask others, then it again."""
        self.executor._registry.end_task(node, None)
        self.executor.counters.add("declined")
        tries.n_declined += 1
        tries.declined_last = True
        if (self.executor._cancel_node is not None and tries.idle_reasks < IDLE_REASKS
                and self._idle(node)):
            # A decline is one draw: an idle node is asked again at once rather than the
            # task queueing behind busy ones (a few times, never in a loop).
            tries.idle_reasks += 1
        else:
            tries.busy.add(node)
        tries.backoff_s = max(tries.backoff_s, min(exc.retry_after_s, MAX_BUSY_BACKOFF_S))
        log_event("task_declined", round=self.label, shard=index, node=node)

    def _idle(self, node: str) -> bool:
        """Whether `node` is alive with nothing in flight (for any round) right now."""
        return any(v.address == node and v.in_flight == 0
                   for v in self.executor._registry.views())

    def _failed(self, index: int, tries: _Tries, node: str, exc: NodeFailure) -> None:
        """The node could not run the task: mark it dead, exclude it, fail past max attempts."""
        ex = self.executor
        ex._registry.end_task(node, None)
        tries.failures.append(f"{node} {exc.reason}")
        if ex._clock() >= self.deadline:
            raise self._deadline_error(index, tries.failures) from None
        ex._registry.mark_dead(node, exc.reason, task_failed=True)
        ex.counters.add("failures")
        tries.failed.add(node)
        tries.n_failed += 1
        log_event("task_failed", round=self.label, shard=index, node=node, reason=exc.reason)
        if tries.n_failed >= ex._max_attempts:
            raise NoNodeFinished(
                f"shard task {index} failed on {tries.n_failed} attempts "
                f"(--max-attempts {ex._max_attempts}): " + "; ".join(tries.failures[-5:])
            ) from None

    def _out_of_time(
        self, index: int, tries: _Tries, node: str, exc: OutOfTime, timeout_s: float
    ) -> None:
        """The node stopped the task at its budget: one more try elsewhere, then fail the round."""
        ex = self.executor
        ex._registry.end_task(node, None)
        # The attempt's budget as given (the node's may be a little less after an
        # upload): the figure a person set, --task-timeout-s or the round's time left.
        tries.failures.append(f"{node} out of time ({timeout_s:.3g}s budget)")
        if ex._clock() >= self.deadline:
            raise self._deadline_error(index, tries.failures) from None
        ex.counters.add("deadline_exceeded")
        tries.out_of_time.append(node)
        log_event("task_out_of_time", round=self.label, shard=index, node=node,
                  budget_s=timeout_s, reason=exc)
        if len(tries.out_of_time) >= OUT_OF_TIME_TRIES:
            raise OutOfTime(
                f"shard task {index} ran out of its time budget of {timeout_s:.3g}s "
                f"on {len(tries.out_of_time)} tries ({', '.join(tries.out_of_time)}); "
                f"the budget is the coordinator's --task-timeout-s "
                f"({ex._task_timeout_s:g}s) or the round's time left, whichever is "
                "less: raise it, or ask for fewer epochs or smaller shards",
                timeout_s,
            ) from None
        tries.failed.add(node)  # try it once more, elsewhere

    def _succeeded(
        self, index: int, tries: _Tries, node: str, value: Any, began: float, backup: bool
    ) -> None:
        """Record the result (unless another runner's came first) and the node's timing."""
        ex = self.executor
        elapsed_s = ex._clock() - began
        times = _node_times(value)
        ex._registry.end_task(node, elapsed_s, times)
        if times is not None:
            busy_s, delay_s = times
            total_s = float(value.timings.total_s)
            slot = self.slots[index]
            slot.steady_s, slot.overhead_s = busy_s - delay_s, max(elapsed_s - total_s, 0.0)
        outcome = TaskOutcome(
            index, value, node, tries.attempts, tries.failures, tries.start_s or 0.0,
            ex._clock() - self.start, tries.n_declined,
        )
        won = self._finish(index, outcome)
        if not won:
            ex.counters.add("results_dropped")
        log_event(
            "task_done", round=self.label, shard=index, node=node, attempts=tries.attempts,
            declined=tries.n_declined,
            elapsed_s=elapsed_s, backup=backup, used=won,
        )

    def _wait_for_node(
        self,
        failed: set[str],
        busy: set[str],
        backoff_s: float,
        remaining: float,
        avoid: str | None = None,
        index: int | None = None,
    ) -> float:
        """Nobody eligible: back off if all are busy, else wait for a node to come alive.

        A first runner's backoff (task `index`) ends early when wake_for_idle wakes it for
        an idle node.
        """
        alive = {v.address for v in self.executor._registry.views()}
        if alive - failed:
            # Every healthy node said busy: give them a moment, then ask them all again.
            if index is None or self.executor._cancel_node is None:
                self.abort.wait(min(backoff_s, remaining))
            else:
                slot = self.slots[index]
                with slot.lock:
                    slot.wake.clear()
                    slot.backing_off = True
                with self.done_lock:
                    self.backing_off[index] = None
                try:
                    slot.wake.wait(min(backoff_s, remaining))
                finally:
                    with slot.lock:
                        slot.backing_off = False
                    with self.done_lock:
                        self.backing_off.pop(index, None)
            busy.clear()
            return min(backoff_s * 2, MAX_BUSY_BACKOFF_S)
        if alive - {avoid}:
            # Only nodes that failed this task are alive (they came back): try them again;
            # --max-attempts still bounds the failures.
            failed.intersection_update({avoid} if avoid else set())
            return backoff_s
        if alive:  # a backup whose only candidate is the straggler's own node
            self.abort.wait(min(remaining, NO_NODE_POLL_S))
        else:
            self.executor._registry.wait_for_alive(min(remaining, NO_NODE_POLL_S))
        return backoff_s

    def _deadline_error(self, index: int, failures: list[str]) -> NoNodeFinished:
        """The round's picture (tasks left, nodes alive of known), not one task's."""
        n_left = sum(slot.outcome is None for slot in self.slots)
        registry = self.executor._registry
        n_alive, n_known = registry.n_alive(), len(registry.snapshot())
        detail = (f"; shard task {index} last failed on: " + "; ".join(failures[-3:])
                  if failures else "")
        return NoNodeFinished(
            f"round deadline of {self.deadline_s:g}s passed with {n_left} of "
            f"{len(self.slots)} tasks unfinished ({n_alive} of {n_known} known nodes alive"
            f"{detail})"
        )
