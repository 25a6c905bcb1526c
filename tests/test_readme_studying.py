"""The README's "Studying a run" commands, as written but shortened, run in the Quick start's
.venv: each block exits 0, writes the files the README promises, and nothing new appears in
the repository root (issue 11, point 5).

The commands are read from README.md itself, so an edit there is what gets tested. Only
sizes are shortened (rounds, epochs, load delay, durations, concurrency levels, node
counts) and /tmp/ is moved into the test's own directory; each shortening must find its
text, so a README edit that escapes one fails here instead of running the long version.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import require

from harness import REPO

pytestmark = pytest.mark.slow

SECTION = "Studying a run"
# (pattern, replacement): each must match somewhere in the section's commands.
SHORTEN = [
    (r'"\$D" 5 75 24 1e-4', '"$D" 2 2 24 1e-4'),
    (r"(--load-delay\S*) 0\.5", r"\1 0.1"),
    (r"for n in 1 2 4;", "for n in 1 2;"),
    (r"--concurrency 1,2,4,8,16", "--concurrency 1,2"),
    (r"(--duration\S*) 5", r"\1 1"),
    (r"--epochs 200", "--epochs 2"),
    (r"--compare nodes1,nodes2,nodes4", "--compare nodes1,nodes2"),
]
ANALYSIS_FILES = ["summary.csv", "round_times.png", "task_durations.png", "time_breakdown.png"]
LOADTEST_FILES = ["raw.csv", "summary.csv", "throughput.png", "latency_p95.png",
                  "error_rate.png", "run.json", "report.md"]


def section_commands(readme: str, title: str) -> list[str]:
    """The ```sh blocks of the `## title` section, in order."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, f'README.md has no "## {title}" section'
    return re.findall(r"^```sh\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL)


def shortened(blocks: list[str], tmp: Path) -> list[str]:
    text = "\n\x00\n".join(blocks)
    for pattern, replacement in SHORTEN:
        text, n = re.subn(pattern, replacement, text)
        assert n, f"README's {SECTION!r} commands no longer contain {pattern!r}: update SHORTEN"
    text, n = re.subn(r"/tmp/", f"{tmp}/", text)
    assert n, "the commands no longer write under /tmp/"
    return text.split("\n\x00\n")


def test_studying_a_run_commands_run_in_the_quick_start_venv(tmp_path: Path) -> None:
    require((REPO / ".venv" / "bin" / "python").exists(),
            "no .venv in the repository: scripts/demo.sh or scripts/test.sh makes it")
    blocks = shortened(section_commands((REPO / "README.md").read_text(), SECTION), tmp_path)
    assert len(blocks) == 2, blocks  # analyze_timing, loadtest
    root_before = set(os.listdir(REPO))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}

    for block in blocks:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    policies = tmp_path / "policies"
    for policy in ("random", "load-aware", "round-robin"):
        assert (policies / policy / "timing.txt").stat().st_size > 0, policy
    for name in ANALYSIS_FILES:
        assert (policies / "analysis" / name).stat().st_size > 0, name
    for label in ("nodes1", "nodes2"):
        for name in LOADTEST_FILES:
            assert (tmp_path / "lt" / label / name).stat().st_size > 0, f"{label}/{name}"
    assert (tmp_path / "lt" / "compare_nodes1_nodes2" / "report.md").exists()
    assert set(os.listdir(REPO)) - root_before == set(), "written into the repository root"
