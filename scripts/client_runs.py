"""One run of the real client (`python -m client`) for the experiment scripts, kept in a workdir.

A library for the scripts beside it (no command of its own): experiment_noniid.py and
experiment_robust.py run the client the same way and read the same things back.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from local_cluster import REPO

from client.timing import read_timing


@dataclass
class ClientRun:
    """What one client run left: its wall time, how it failed, and its timing.txt rows."""

    seconds: float
    failure: str = ""  # the client's last line on stderr when it exited non-zero, else ""
    rows: list[dict[str, str]] = field(default_factory=list)  # timing.txt's (none if absent)

    @property
    def errors(self) -> list[float]:
        """The validation error after each round (timing.txt's `round` rows)."""
        return [float(row["validation_error"]) for row in self.rows if row["kind"] == "round"]


def run_client(workdir: Path, argv: list[str], timing: Path, timeout_s: float) -> ClientRun:
    """Run the client `argv` (from the interpreter on, writing its --timing to `timing`) in
    the repository, within `timeout_s` (subprocess.TimeoutExpired past it).

    Leaves in `workdir`: client.argv (the command after the interpreter, shell-quoted),
    client.out and client.err (what it printed).
    """
    (workdir / "client.argv").write_text(shlex.join(argv[1:]) + "\n")
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout_s)
    run = ClientRun(time.perf_counter() - started)
    (workdir / "client.out").write_text(done.stdout)
    (workdir / "client.err").write_text(done.stderr)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        run.failure = lines[-1]
    if timing.exists():
        _, run.rows = read_timing(timing)
    return run
