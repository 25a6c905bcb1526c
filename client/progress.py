"""What the round in flight is doing: a bar on a terminal, plain `waiting:` lines when piped.

The client gets a round's results in one RPC, so the source is the coordinator's
status(): a thread polls it on a connection of its own and counts tasks completed since
the round began (summed over nodes: on a shared coordinator other jobs' tasks count too,
capped at this round's total). When the round cannot go on (no node alive) or has had no
result for a while (a loaded node, nodes declining), it says what it waits for: nodes
alive of known, the nodes holding tasks, the seconds left of the round's deadline. On a
terminal that text rides on the bar, which is redrawn every poll so its clock moves; piped,
it is a `waiting: ...` line when the reason changes and every few seconds while it lasts.
If status() cannot be had, a terminal still shows the elapsed time.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from client.coordinator_link import CoordinatorLink
from idl.gen import Coordinator
from idl.gen.ttypes import ClusterStatus, RoundRequest, RoundResult
from idl.rpc import Address, connect

POLL_S = 0.2
PIPED_POLL_S = 0.5  # piped output only needs the waiting reason: poll the coordinator less
STATUS_TIMEOUT_S = 5.0
STALL_S = 1.0  # no result for this long: say what the round waits for
REPEAT_S = 5.0  # piped: repeat an unchanged waiting line this often
SHOWN_NODES = 3


class RoundWatch:
    """Turns successive status() snapshots into (tasks done, what the round waits for)."""

    def __init__(self, total: int, deadline_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self._deadline_s = deadline_s
        self._clock = clock
        self._began = clock()
        self._baseline: tuple[int, int] | None = None  # tasks done, declined at the start
        self._done = 0
        self._last_result = self._began

    def update(self, status: ClusterStatus) -> tuple[int, str | None]:
        nodes = status.nodes or []
        counted = (sum(n.tasks_done for n in nodes), (status.counters or {}).get("declined", 0))
        if self._baseline is None:
            self._baseline = counted
        done = min(max(counted[0] - self._baseline[0], 0), self.total)
        now = self._clock()
        if done != self._done:
            self._done, self._last_result = done, now
        if done >= self.total:
            return done, None
        stalled_s = now - self._last_result
        if stalled_s < STALL_S:  # results flow, or the round has only just begun
            return done, None
        left_s = max(self._deadline_s - (now - self._began), 0.0)
        alive = [n for n in nodes if n.alive]
        if not alive:
            return done, (f"no node alive ({len(alive)} of {len(nodes)} known); "
                          f"{left_s:.0f}s left of the round's deadline")
        holding = [n.address for n in alive if n.tasks_in_flight > 0]
        declined = counted[1] - self._baseline[1]
        if holding:
            shown = ", ".join(holding[:SHOWN_NODES])
            more = f" and {len(holding) - SHOWN_NODES} more" if len(holding) > SHOWN_NODES else ""
            what = f"{self.total - done} task(s) on {shown}{more}"
        else:
            what = f"a node to take {self.total - done} task(s)"
        return done, (f"waiting {stalled_s:.0f}s for {what} ({len(alive)} of {len(nodes)} "
                      f"nodes alive, {declined} declined); {left_s:.0f}s left of the deadline")


class StatusPoller(threading.Thread):
    """Polls a coordinator's status() and hands each snapshot to `on_status`."""

    def __init__(self, address: Address, on_status: Callable[[ClusterStatus], None],
                 poll_s: float = POLL_S, tls: ssl.SSLContext | None = None,
                 token: str = "") -> None:
        super().__init__(name="progress", daemon=True)
        self._address = address
        self._tls = tls
        self._token = token
        self._on_status = on_status
        self._poll_s = poll_s
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            conn = connect(Coordinator.Client, self._address, STATUS_TIMEOUT_S, self._tls)
        except Exception:  # no source: a terminal's bar shows elapsed time only
            return
        try:
            while True:
                self._on_status(conn.client.status(self._token))
                if self._stopped.wait(self._poll_s):
                    return
        except Exception:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=STATUS_TIMEOUT_S)


class ProgressLink:
    """A CoordinatorLink that shows what the round in flight does while run_round runs."""

    def __init__(self, link: CoordinatorLink, rounds: int, stream: IO[str],
                 terminal: bool) -> None:
        self._link = link
        self._rounds = rounds
        self._stream = stream
        self._terminal = terminal

    def run_round(self, request: RoundRequest,
                  on_failover: Callable[[Address, str], None] | None = None) -> RoundResult:
        watch = RoundWatch(len(request.shards or []), request.deadline_s or 0.0)
        label = f"round {request.round}/{self._rounds}"
        show = _BarDisplay(watch, label, self._stream) if self._terminal else \
            _LineDisplay(watch, label, self._stream)
        poller = StatusPoller(self._link.active, show.on_status,
                              POLL_S if self._terminal else PIPED_POLL_S, tls=self._link.tls,
                              token=request.token or "")
        poller.start()
        try:
            return self._link.run_round(request, on_failover)
        finally:
            poller.stop()
            show.close()

    def __getattr__(self, name: str):
        return getattr(self._link, name)  # active, upload_missing, close


class _BarDisplay:
    """tqdm bar of tasks; the waiting reason as its postfix, redrawn every poll."""

    def __init__(self, watch: RoundWatch, label: str, stream: IO[str]) -> None:
        from tqdm import tqdm  # only terminals pay for the import

        self._watch = watch
        self._bar = tqdm(total=watch.total, desc=label, unit="task", leave=False, file=stream,
                         dynamic_ncols=True, mininterval=0.1)
        self._lock = threading.Lock()

    def on_status(self, status: ClusterStatus) -> None:
        done, waiting = self._watch.update(status)
        with self._lock:
            self._bar.update(max(done - self._bar.n, 0))
            self._bar.set_postfix_str(waiting or "", refresh=False)
            self._bar.refresh()  # the clock moves even when no task finishes

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class _LineDisplay:
    """Piped output: a `waiting: ...` line when the reason changes and every REPEAT_S."""

    def __init__(self, watch: RoundWatch, label: str, stream: IO[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._watch = watch
        self._label = label
        self._stream = stream
        self._clock = clock
        self._said: tuple[str, float] | None = None  # (reason without figures, when)

    def on_status(self, status: ClusterStatus) -> None:
        done, waiting = self._watch.update(status)
        if waiting is None:
            self._said = None
            return
        kind = "".join(c for c in waiting if not c.isdigit())
        now = self._clock()
        if self._said and self._said[0] == kind and now - self._said[1] < REPEAT_S:
            return
        self._said = (kind, now)
        print(f"waiting: {self._label}, {done}/{self._watch.total} tasks done: {waiting}",
              file=self._stream, flush=True)

    def close(self) -> None:
        pass


def with_progress(
    factory: Callable[[dict[str, Path]], CoordinatorLink], rounds: int,
    stream: IO[str] | None = None,
) -> Callable[[dict[str, Path]], CoordinatorLink]:
    """Wrap `factory`'s links in ProgressLink: a bar on a terminal, waiting lines otherwise."""
    stream = stream or sys.stdout
    terminal = stream.isatty()
    return lambda paths: ProgressLink(  # type: ignore[return-value]
        factory(paths), rounds, stream, terminal)
