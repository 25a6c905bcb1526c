"""An unmet test prerequisite skips with its reason locally and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROBE = '''
import pytest
from conftest import require

def test_function_form_needs_a_widget():
    require(False, "no widget here")

@pytest.mark.needs(False, "no gadget here")
def test_marker_form_needs_a_gadget():
    pass

@pytest.mark.needs(True, "never shown")
def test_met_need_runs():
    require(True, "never shown either")
'''


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """Run the probe tests in a fresh pytest with this directory's conftest as a plugin."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
            "-rA", "-q", "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)


def test_unmet_need_skips_with_its_reason_without_ci(tmp_path: Path) -> None:
    done = run_probe(tmp_path, ci=None)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout, done.stdout
    assert "SKIPPED" in done.stdout and "no widget here" in done.stdout
    assert "no gadget here" in done.stdout


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_ci_set_to_false_still_skips(tmp_path: Path, value: str) -> None:
    done = run_probe(tmp_path, ci=value)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout, done.stdout


@pytest.mark.parametrize("value", ["true", "1"])
def test_unmet_need_fails_under_ci(tmp_path: Path, value: str) -> None:
    done = run_probe(tmp_path, ci=value)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "skipped" not in done.stdout, done.stdout
    assert "FAILED" in done.stdout and "no widget here" in done.stdout
    assert "ERROR" in done.stdout and "no gadget here" in done.stdout
    assert "1 passed" in done.stdout
