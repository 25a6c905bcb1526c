"""The README's Quick start: scripts/demo.sh trains end to end and leaves nothing running."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from harness import REPO

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it has exited all the same.
    stat = f"/proc/{pid}/stat"
    return not (os.path.exists(stat) and open(stat).read().split()[2] == "Z")


def test_demo_trains_prints_each_round_and_stops_its_processes() -> None:
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True,
                          text=True, timeout=600, cwd=REPO)

    assert done.returncode == 0, done.stdout + done.stderr
    errors = [float(e) for e in re.findall(r"^round \d+/\d+\s+validation error ([\d.]+)%",
                                           done.stdout, re.MULTILINE)]
    assert len(errors) >= 3 and errors[-1] < errors[0], done.stdout
    assert re.search(r"^final validation error [\d.]+%$", done.stdout, re.MULTILINE)
    pids = [int(p) for p in re.search(r"^cluster: pids ([\d ]+)$", done.stdout,
                                      re.MULTILINE).group(1).split()]
    assert len(pids) == 5  # a coordinator and 4 nodes
    assert not [pid for pid in pids if alive(pid)]
