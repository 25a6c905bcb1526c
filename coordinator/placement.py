"""One short call placed on a node by the scheduling policy, retried elsewhere when a node fails.

What a prediction batch needs from the cluster, lighter than a round's executor (no threads
of its own, no stragglers: a batch is milliseconds of work): pick a node under one lock so
concurrent picks see each other's in-flight counts, call it with half the time left (at
least a second, at most all of it: a node that hangs costs half the deadline, and the retry
elsewhere still has the rest), and on
- NodeBusyError: try another node, after a short pause once every node said busy;
- NodeFailure: mark the node dead, exclude it, try another (at most `max_attempts` failures);
- anything else (OutOfTime, TaskRejected, ConfigurationError): raise it to the caller.
With no node alive it waits for one until the deadline: then NoNodeFinished. The call is
idempotent (a prediction), so running it again elsewhere can change nothing but time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from coordinator.executor import Counters, NodeBusyError, NodeFailure, NoNodeFinished
from coordinator.policies import Policy
from coordinator.registry import Registry
from runtime.budget import OutOfTime
from runtime.events import log_event

T = TypeVar("T")
BUSY_PAUSE_S = 0.01
ATTEMPT_MIN_S = 1.0
NO_NODE_POLL_S = 0.5


class Placer:
    """Thread-safe: many batches are placed at once."""

    def __init__(
        self, registry: Registry, policy: Policy, *, max_attempts: int = 5,
        counters: Counters | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._policy = policy  # its own instance: rounds pick under another lock
        self._max_attempts = max_attempts
        self.counters = counters or Counters()
        self._clock = clock
        self._lock = threading.Lock()

    def run(self, call: Callable[[str, float], T], deadline: float, what: str) -> T:
        """`call(node, timeout_s)`'s result from the first node that answers, before `deadline`."""
        failed: set[str] = set()
        busy: set[str] = set()
        failures: list[str] = []
        budget_s = deadline - self._clock()
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._late(what, failures, budget_s)
            node = self._reserve(failed | busy)
            if node is None:
                self._wait(failed, busy, remaining)
                continue
            began = self._clock()
            try:
                value = call(node, max(remaining / 2, min(remaining, ATTEMPT_MIN_S)))
            except NodeBusyError:
                self._registry.end_task(node, None)
                busy.add(node)
                continue
            except NodeFailure as exc:
                self._registry.end_task(node, None)
                self._registry.mark_dead(node, exc.reason, task_failed=True)
                self.counters.add("serving_failures")
                failures.append(f"{node} {exc.reason}")
                failed.add(node)
                log_event("batch_retry", what=what, node=node, reason=exc.reason)
                if len(failures) >= self._max_attempts:
                    raise NoNodeFinished(
                        f"{what} failed on {len(failures)} attempts (--max-attempts "
                        f"{self._max_attempts}): " + "; ".join(failures[-5:])
                    ) from None
                continue
            except BaseException:
                self._registry.end_task(node, None)
                raise
            self._registry.end_task(node, self._clock() - began)
            return value

    def _reserve(self, exclude: set[str]) -> str | None:
        with self._lock:
            choice = self._policy.pick(self._registry.views(), exclude)
            if choice is None:
                return None
            self._registry.begin_task(choice.address)
            return choice.address

    def _wait(self, failed: set[str], busy: set[str], remaining: float) -> None:
        """No eligible node: pause if all are busy, retry failed ones that came back, or wait."""
        alive = {v.address for v in self._registry.views()}
        if alive - failed:
            time.sleep(min(BUSY_PAUSE_S, remaining))
            busy.clear()
        elif alive:
            failed.clear()  # only nodes that failed this call are alive: they came back
        else:
            self._registry.wait_for_alive(min(remaining, NO_NODE_POLL_S))

    def _late(self, what: str, failures: list[str], budget_s: float) -> Exception:
        if not failures and not self._registry.n_alive():
            return NoNodeFinished(f"{what}: no compute node alive within {budget_s:.3g}s")
        detail = f" (failed on: {'; '.join(failures[-3:])})" if failures else ""
        return OutOfTime(f"{what} not answered within {budget_s:.3g}s{detail}", budget_s)

