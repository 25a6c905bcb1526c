"""What the benchmarks print about the machine they measured on.

A library for the scripts beside it (no command of its own): figures are only comparable
with the CPU named, and the CPU differs between sessions (AMD Zen 4 one day, Intel Xeon the
next).
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, as `lscpu` prints it (read from /proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
