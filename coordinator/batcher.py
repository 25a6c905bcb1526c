"""Micro-batching: concurrent requests for one model grouped into batches, each answered once.

The batcher knows nothing of Thrift or nodes. A caller submits its rows under a key (the
model's digest) and blocks until its answer or its deadline. Requests wait in one FIFO
queue per key; a batch leaves when its rows reach `max_rows`, when its oldest request has
waited `wait_s`, or at once when no batch of its key is in flight (an idle model adds no
wait; a busy one gathers what arrives while its batch is out, so batches grow with load),
taking requests in arrival order up to `max_rows` (a request larger than that goes alone;
rows are never split, so they come back in order). A fixed pool of sender
threads takes ready batches and runs `run(batch)`, which returns one answer per request
in order (or raises, and every request still waiting gets that error). While every sender
is busy, requests keep queueing too; the senders bound the batches in flight.

Every request is answered exactly once: a state change under the batcher's lock decides
between its batch's answer and its own deadline, whichever comes first; a request whose
deadline passes while queued leaves the queue and is never sent. Rows held (queued or in
flight) are bounded by `max_queued_rows`: past it, submit raises QueueFull at once rather
than letting the queue grow. A batch of one request that leaves at once (an idle model's
request, or one of `max_rows` or more, which would go alone anyway) runs on its caller's
own thread, with the same bound and deadline; with `max_rows <= 1` (no batching) every
request does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.budget import OutOfTime
from runtime.events import log_event

_QUEUED, _SENT, _DONE = 0, 1, 2


class QueueFull(Exception):
    """Too many rows wait already; the caller should try again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Request:
    """One caller's rows waiting for their answer."""

    rows: Any  # opaque to the batcher: the runner concatenates them
    n_rows: int
    probabilities: bool
    deadline: float  # on the batcher's clock
    deadline_s: float
    queued_at: float
    state: int = _QUEUED
    answer: Any = None
    error: BaseException | None = None
    # Held from creation; released once, by whoever answers: the caller waits on it.
    latch: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class Batch:
    """Requests for one key sent together, in arrival order."""

    key: str
    requests: list[Request]
    n_rows: int
    probabilities: bool  # computed for the whole batch when any request asks
    deadline: float  # the latest of its requests': someone still waits until then
    counted: bool = True  # counted in its key's batches in flight (not a lone big request)


Run = Callable[[Batch], Sequence[Any]]


class Batcher:
    """Thread-safe; `submit` from any number of threads, `close` once at shutdown."""

    def __init__(
        self,
        run: Run,
        *,
        max_rows: int = 256,
        wait_s: float = 0.002,
        max_queued_rows: int = 65536,
        senders: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.max_rows = max_rows
        self.wait_s = wait_s
        self.max_queued_rows = max_queued_rows
        self._n_senders = senders
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[str, deque[Request]] = {}
        self._queued_rows: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # batches of a key sent and not yet answered
        self._held_rows = 0  # queued or in flight, not yet answered
        self._timing = False  # one idle sender sleeps until the next flush; the rest until told
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def batching(self) -> bool:
        return self.max_rows > 1

    def held_rows(self) -> int:
        with self._cond:
            return self._held_rows

    def submit(self, key: str, rows: Any, n_rows: int, probabilities: bool,
               deadline_s: float) -> Any:
        """Block until this request's answer (or raise its batch's error, OutOfTime at its
        deadline, QueueFull when the queue is full)."""
        now = self._clock()
        request = Request(rows, n_rows, probabilities, now + deadline_s, deadline_s, now)
        request.latch.acquire()
        with self._cond:
            if self._closed:
                raise QueueFull("the coordinator is shutting down", 1.0)
            if self._held_rows and self._held_rows + n_rows > self.max_queued_rows:
                raise QueueFull(
                    f"prediction queue full: {self._held_rows:,} rows wait already and "
                    f"{n_rows:,} more would pass the bound of {self.max_queued_rows:,} "
                    "(--max-queued-rows); retry shortly",
                    retry_after_s=max(self.wait_s, 0.01),
                )
            self._held_rows += n_rows
            alone = not self.batching or n_rows >= self.max_rows
            # An idle model's first request leaves at once: on its own thread, no hand-over.
            idle = not alone and key not in self._queues and not self._in_flight.get(key)
            if alone or idle:
                request.state = _SENT
                if idle:
                    self._in_flight[key] = 1
            else:
                self._enqueue(key, request)
        if alone or idle:  # a batch of its own, sent from the caller's thread
            self._execute(Batch(key, [request], n_rows, probabilities, request.deadline,
                                counted=idle))
        return self._wait(request)

    def _enqueue(self, key: str, request: Request) -> None:
        """Queue `request` and wake a sender when it starts a queue or fills a batch (locked)."""
        if not self._threads:
            self._start_senders()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._queued_rows[key] = 0
        queue.append(request)
        self._queued_rows[key] += request.n_rows
        if len(queue) == 1 or self._queued_rows[key] >= self.max_rows:
            self._cond.notify()

    def _wait(self, request: Request) -> Any:
        """The request's answer; OutOfTime if its deadline passes first (then never answered)."""
        answered = request.latch.acquire(timeout=max(request.deadline - self._clock(), 0.0))
        if not answered:
            with self._cond:
                if request.state != _DONE:  # else the answer came just in time: use it
                    if request.state == _QUEUED:
                        self._dequeue(request)
                    request.state = _DONE
                    self._held_rows -= request.n_rows
                    raise OutOfTime(
                        f"prediction not answered within its deadline of "
                        f"{request.deadline_s:g}s ({request.n_rows} rows; "
                        f"{self._held_rows:,} rows waiting or in flight)",
                        request.deadline_s,
                    )
        if request.error is not None:
            raise request.error
        return request.answer

    def _dequeue(self, request: Request) -> None:
        for key, queue in self._queues.items():
            if request in queue:
                queue.remove(request)
                self._queued_rows[key] -= request.n_rows
                if not queue:
                    del self._queues[key], self._queued_rows[key]
                return

    def _start_senders(self) -> None:
        for i in range(self._n_senders):
            thread = threading.Thread(target=self._send_loop, name=f"batch-sender-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
            self._execute(batch)

    def _next_batch(self) -> Batch | None:
        """Wait for a ready batch and take it (locked); None once closed."""
        while not self._closed:
            batch, wait_s = self._take_ready(self._clock())
            if batch is not None:
                if self._queues:
                    self._cond.notify()  # someone else watches what is left
                return batch
            if wait_s is not None and not self._timing:
                self._timing = True
                self._cond.wait(wait_s)
                self._timing = False
            else:
                self._cond.wait()
        return None

    def _take_ready(self, now: float) -> tuple[Batch | None, float | None]:
        """The ready batch whose oldest request waited longest, or how long until one is."""
        best_key, best_at = None, 0.0
        soonest: float | None = None
        for key, queue in self._queues.items():
            head_at = queue[0].queued_at
            if (self._queued_rows[key] >= self.max_rows or now - head_at >= self.wait_s
                    or not self._in_flight.get(key)):
                if best_key is None or head_at < best_at:
                    best_key, best_at = key, head_at
            else:
                due = head_at + self.wait_s - now
                soonest = due if soonest is None else min(soonest, due)
        if best_key is None:
            return None, soonest
        return self._cut(best_key), None

    def _cut(self, key: str) -> Batch:
        """Take requests from the head of `key`'s queue, up to max_rows (at least one)."""
        queue = self._queues[key]
        taken = [queue.popleft()]
        n_rows = taken[0].n_rows
        while queue and n_rows + queue[0].n_rows <= self.max_rows:
            request = queue.popleft()
            taken.append(request)
            n_rows += request.n_rows
        self._queued_rows[key] -= n_rows
        if not queue:
            del self._queues[key], self._queued_rows[key]
        for request in taken:
            request.state = _SENT
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return Batch(key, taken, n_rows, any(r.probabilities for r in taken),
                     max(r.deadline for r in taken))

    def _execute(self, batch: Batch) -> None:
        """Run one batch and answer each of its requests that is still waiting."""
        answers: Sequence[Any] = ()
        error: BaseException | None = None
        try:
            answers = self._run(batch)
            if len(answers) != len(batch.requests):
                raise RuntimeError(f"{len(answers)} answers for {len(batch.requests)} requests")
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
            error = exc
        with self._cond:
            if batch.counted:
                left = self._in_flight[batch.key] - 1
                if left:
                    self._in_flight[batch.key] = left
                else:
                    del self._in_flight[batch.key]
                    if batch.key in self._queues:
                        self._cond.notify()  # what queued meanwhile may leave now
            for i, request in enumerate(batch.requests):
                if request.state != _SENT:
                    continue  # its deadline passed: it has its answer already
                request.state = _DONE
                self._held_rows -= request.n_rows
                if error is None:
                    request.answer = answers[i]
                else:
                    request.error = error
                request.latch.release()
        if error is not None:
            log_event("batch_failed", model=batch.key[:12], requests=len(batch.requests),
                      rows=batch.n_rows, reason=error)

    def close(self) -> None:
        """Stop the senders once they finish their batches; queued requests time out."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
