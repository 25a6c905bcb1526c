"""The committed generated code is what the Thrift compiler makes of idl/cluster.thrift."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO


@pytest.mark.needs(shutil.which("thrift") is not None, "thrift compiler not installed "
                   "(apt-get install thrift-compiler; .ci/run installs it)")
def test_committed_generated_code_matches_a_regeneration(tmp_path: Path) -> None:
    out = tmp_path / "gen"

    subprocess.run(["bash", str(REPO / "scripts" / "gen_idl.sh"), str(out)], check=True,
                   capture_output=True)

    committed = REPO / "idl" / "gen"
    names = sorted(p.name for p in out.glob("*.py"))
    assert names == sorted(p.name for p in committed.glob("*.py"))
    mismatch = filecmp.cmpfiles(committed, out, names, shallow=False)[1]
    assert not mismatch, f"idl/gen is stale, run scripts/gen_idl.sh: {mismatch}"
