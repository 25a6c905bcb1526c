"""Simulated load and injected faults: the seeded random draws a node makes per task.

The load simulation follows the original system exactly: a task that may be declined
is declined with probability p; an accepted task sleeps the load delay with
probability p (a separate draw). Faults (crash, extra latency) draw from their own
generator so switching them on leaves the load draws, and so the experiments, unchanged.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    """p in [0, 1]; delay, latency in seconds; crash probability per accepted task."""

    load_probability: float
    load_delay_s: float = 3.0
    crash_probability: float = 0.0
    extra_latency_s: float = 0.0
    seed: int = 0


class LoadSimulator:
    """Thread-safe seeded draws: same seed and same task order give the same outcomes."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self._load_rng = random.Random(config.seed)
        self._fault_rng = random.Random(f"{config.seed}:faults")
        self._lock = threading.Lock()

    def declines(self, may_decline: bool) -> bool:
        """True when a task that may be declined is turned away (drawn only if it may be)."""
        if not may_decline:
            return False
        with self._lock:
            return self._load_rng.random() < self.config.load_probability

    def load_delay_s(self) -> float:
        """Seconds an accepted task sleeps before training: the load delay with probability p."""
        with self._lock:
            loaded = self._load_rng.random() < self.config.load_probability
        return self.config.load_delay_s if loaded else 0.0

    def crashes(self) -> bool:
        """True when this accepted task should take the whole process down."""
        with self._lock:
            return self._fault_rng.random() < self.config.crash_probability
