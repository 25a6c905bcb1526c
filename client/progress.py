"""A progress bar for the round in flight, shown only when stdout is a terminal.

The client gets a round's results in one RPC, so the bar's source is the coordinator's
status(): a thread polls it on a connection of its own and counts tasks completed
since the round began (summed over nodes: on a shared coordinator other jobs' tasks
count too, capped at this round's total). If status() cannot be had, the bar still
shows the elapsed time. Piped output gets no bar: the per-round lines stay plain.
"""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from client.coordinator_link import CoordinatorLink
from idl.gen import Coordinator
from idl.gen.ttypes import RoundRequest, RoundResult
from idl.rpc import Address, connect

POLL_S = 0.2
STATUS_TIMEOUT_S = 5.0


class TaskWatcher(threading.Thread):
    """Polls a coordinator's status() and reports tasks done since it started."""

    def __init__(self, address: Address, on_done: Callable[[int], None],
                 poll_s: float = POLL_S, tls: ssl.SSLContext | None = None,
                 token: str = "") -> None:
        super().__init__(name="progress", daemon=True)
        self._address = address
        self._tls = tls
        self._token = token
        self._on_done = on_done
        self._poll_s = poll_s
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            conn = connect(Coordinator.Client, self._address, STATUS_TIMEOUT_S, self._tls)
        except Exception:  # no bar source: the bar shows elapsed time only
            return
        try:
            baseline = _tasks_done(conn.client, self._token)
            while not self._stopped.wait(self._poll_s):
                self._on_done(_tasks_done(conn.client, self._token) - baseline)
        except Exception:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=STATUS_TIMEOUT_S)


def _tasks_done(client: Coordinator.Client, token: str) -> int:
    return sum(n.tasks_done for n in client.status(token).nodes or [])


class ProgressLink:
    """A CoordinatorLink that shows a bar of the round's tasks while run_round runs."""

    def __init__(self, link: CoordinatorLink, rounds: int, stream: IO[str]) -> None:
        self._link = link
        self._rounds = rounds
        self._stream = stream

    def run_round(self, request: RoundRequest,
                  on_failover: Callable[[Address, str], None] | None = None) -> RoundResult:
        from tqdm import tqdm  # only terminals pay for the import

        total = len(request.shards or [])
        bar = tqdm(total=total, desc=f"round {request.round}/{self._rounds}", unit="task",
                   leave=False, file=self._stream, dynamic_ncols=True, mininterval=0.1)
        lock = threading.Lock()

        def show(done: int) -> None:
            with lock:
                bar.update(max(min(done, total) - bar.n, 0))

        watcher = TaskWatcher(self._link.active, show, tls=self._link.tls,
                              token=request.token or "")
        watcher.start()
        try:
            return self._link.run_round(request, on_failover)
        finally:
            watcher.stop()
            bar.close()

    def __getattr__(self, name: str):
        return getattr(self._link, name)  # active, upload_missing, close


def with_progress(
    factory: Callable[[dict[str, Path]], CoordinatorLink], rounds: int,
    stream: IO[str] | None = None,
) -> Callable[[dict[str, Path]], CoordinatorLink]:
    """Wrap `factory`'s links in ProgressLink when `stream` (stdout) is a terminal."""
    stream = stream or sys.stdout
    if not stream.isatty():
        return factory
    return lambda paths: ProgressLink(factory(paths), rounds, stream)  # type: ignore[return-value]
