"""Which queued job runs next, and the thread that keeps --max-running of them going.

Fair share between users: a free slot goes to the user with the fewest jobs running; among
those, to the one whose last job started longest ago (or who never ran one); that user's
oldest queued job starts. One user's fifty queued jobs therefore take turns with another
user's one instead of running first. The choice is a pure function of the registry's
contents, so a restarted gateway continues the same order.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.store import Job, Registry
from runtime.events import log_event

log = logging.getLogger("fedcluster.gateway.scheduler")  # for tracebacks


def pick_next(queued: list[Job], running: list[Job], last_start: dict[str, float]) -> Job | None:
    """The job a free slot goes to (queued is oldest first), or None when nothing waits."""
    oldest: dict[str, Job] = {}
    for job in queued:
        oldest.setdefault(job.user, job)
    if not oldest:
        return None
    busy = Counter(job.user for job in running)
    return min(oldest.values(),
               key=lambda job: (busy[job.user], last_start.get(job.user, -math.inf), job.id))


@dataclass
class JobControl:
    """How a running job is told to stop at its next round boundary."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Starts queued jobs on worker threads as slots free up; `execute` runs one job to its
    end (and records the outcome). Jobs the registry says were running when the gateway
    last stopped are taken up again first: they continue from their checkpoints."""

    def __init__(self, registry: Registry, execute: Callable[[Job, JobControl], None],
                 max_running: int) -> None:
        self._registry = registry
        self._execute = execute
        self._max_running = max_running
        self._wake = threading.Condition()
        self._running: dict[int, tuple[threading.Thread, JobControl]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._resume_interrupted()
        self._thread.start()

    def wake(self) -> None:
        """Something changed (a job queued or ended): look at the queue now."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: int) -> str | None:
        """Cancel a job (see Registry.cancel); a running one hears it at once."""
        state = self._registry.cancel(job_id)
        with self._wake:
            entry = self._running.get(job_id)
        if entry is not None:
            entry[1].cancelled.set()
        self.wake()
        return state

    def running(self) -> list[int]:
        with self._wake:
            return sorted(self._running)

    def stop(self, timeout_s: float) -> None:
        """Ask running jobs to stop at their next round boundary (they stay `running` in the
        registry, to be resumed), and wait up to `timeout_s` for them."""
        self._stopping.set()
        with self._wake:
            entries = list(self._running.values())
            self._wake.notify_all()
        for _, control in entries:
            control.stopping.set()
        for thread, _ in entries:
            thread.join(timeout_s)
        self._thread.join(timeout_s)

    def _resume_interrupted(self) -> None:
        _, running = self._registry.queue()
        for job in running:
            if job.cancel_requested:
                self._registry.finish(job.id, "cancelled")
                self._registry.add_event("job_cancelled", f"job {job.id} cancelled",
                                         "cancel asked before the gateway stopped")
                continue
            log_event("job_taken_up", job=job.id, why="running when the gateway last stopped")
            self._launch(job, resumed=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._fill_slots()
            except Exception:  # the registry failed: say so, try again shortly
                log.exception("scheduler: cannot read the queue")
            with self._wake:
                self._wake.wait(1.0)

    def _fill_slots(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                if len(self._running) >= self._max_running:
                    return
            queued, running = self._registry.queue()
            job = pick_next(queued, running, self._registry.last_starts())
            if job is None:
                return
            self._launch(job)

    def _launch(self, job: Job, resumed: bool = False) -> None:
        if not self._registry.start(job.id):
            return  # cancelled between the choice and the start
        if resumed:
            self._registry.add_event("job_resumed", f"job {job.id} resumed",
                                     "it was running when the gateway stopped; it continues "
                                     "from its last checkpoint")
        else:
            self._registry.add_event("job_started", f"job {job.id} of {job.user} started",
                                     "a free slot, and the fair share's turn")
        control = JobControl()
        if self._stopping.is_set():
            control.stopping.set()
        thread = threading.Thread(target=self._run, args=(job, control),
                                  name=f"job-{job.id}", daemon=True)
        with self._wake:
            self._running[job.id] = (thread, control)
        thread.start()

    def _run(self, job: Job, control: JobControl) -> None:
        try:
            self._execute(job, control)
        except Exception:  # execute records outcomes itself; this is a bug, not a job's fault
            log.exception("job %d: the gateway failed while running it", job.id)
            self._registry.finish(job.id, "failed", error="the gateway failed while running "
                                  "this job; its log has the details")
        finally:
            with self._wake:
                self._running.pop(job.id, None)
                self._wake.notify_all()
