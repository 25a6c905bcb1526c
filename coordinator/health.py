"""The heartbeat: probe every node on an interval, dead ones with backoff, from one thread.

Probes run on a small pool so a hung node costs one probe slot, not the whole beat.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable

from coordinator.registry import Registry
from idl.rpc import Address

MAX_PROBE_TIMEOUT_S = 5.0


class HealthMonitor:
    """Calls `probe(address, timeout_s) -> load dict` for nodes the registry says are due."""

    def __init__(
        self,
        registry: Registry,
        probe: Callable[[Address, float], dict],
        interval_s: float = 1.0,
        max_parallel: int = 16,
    ) -> None:
        self._registry = registry
        self._probe = probe
        self._interval_s = interval_s
        self._tick_s = min(interval_s / 4, 0.25)
        self._timeout_s = min(max(2 * interval_s, 1.0), MAX_PROBE_TIMEOUT_S)
        self._pool = cf.ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="probe")
        self._probing: set[Address] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            for address in self._registry.due_for_probe():
                with self._lock:
                    if address in self._probing:
                        continue
                    self._probing.add(address)
                self._pool.submit(self._probe_one, address)
            self._stopping.wait(self._tick_s)

    def _probe_one(self, address: Address) -> None:
        try:
            self._registry.schedule_probe(address)
            load = self._probe(address, self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._registry.mark_dead(address, f"heartbeat failed: {reason}")
        else:
            self._registry.mark_alive(address, load)
        finally:
            with self._lock:
                self._probing.discard(address)
