"""The README's "Gateway" curl examples, run as written against a real gateway and cluster.

The commands are read from README.md, so an edit there is what gets tested; only the
gateway's address differs (the block reads it from $GW, which the test sets).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from harness import REPO, LocalCluster, start_gateway

pytestmark = pytest.mark.slow

SECTION = "Gateway"


def section_blocks(title: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, f'README.md has no "## {title}" section'
    return re.findall(r"^```sh\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL)


def json_documents(text: str) -> list[object]:
    """Every JSON value curl printed, in order (curl adds no newline after a body)."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while at < len(text):
        start = min((i for i in (text.find("{", at), text.find("[", at)) if i >= 0),
                    default=-1)
        if start < 0:
            break
        value, at = decoder.raw_decode(text, start)
        found.append(value)
    return found


def test_the_gateway_commands_in_the_readme_run_as_written(tmp_path: Path) -> None:
    require(shutil.which("curl") is not None, "curl is not installed (apt-get install curl)")
    blocks = section_blocks(SECTION)
    assert len(blocks) == 2, blocks  # starting it; calling it
    start, calls = blocks
    assert "python -m gateway 8080 --coordinators 127.0.0.1:PORT --db gateway.db " \
           "--data-root datasets" in start

    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.add_node()
        cluster.add_node()
        coordinator = cluster.add_coordinator("round-robin")
        gateway = start_gateway(tmp_path / "gw", [coordinator.address])
        try:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", calls], cwd=tmp_path, capture_output=True,
                text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                             "GW": f"http://{gateway.address}"},
            )
        finally:
            gateway.stop()
        log = gateway.log()

    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log[-3000:]}"
    assert "Traceback" not in done.stdout + log
    answers = json_documents(done.stdout)
    user, datasets, job, predicted, board, status, cancelled, refused = answers
    assert user == {"username": "ada"}
    assert {"name": "letters", "shards": 16, "rows": 16000, "attributes": 16,
            "classes": 26}.items() <= datasets[0].items()
    assert job["state"] == "done" and len(job["rounds"]) == 5, job
    errors = [r["validation_error"] for r in job["rounds"]]
    assert errors[-1] < errors[0] and job["final_validation_error"] == errors[-1]
    asked = {"rounds": 5, "epochs": 5, "h": 32, "eta": 0.003, "seed": 1, "batch_size": 64,
             "momentum": 0.9, "init": "he", "standardize": True, "policy": "",
             "strategy": "fedavg", "fraction": 1.0}  # and every other setting's default
    assert {key: job["settings"][key] for key in asked} == asked
    assert len(predicted["labels"]) == 1 and predicted["labels"][0] in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    with np.load(tmp_path / f"job-{job['id']}.npz") as model:
        assert model["w1"].shape == (16, 32)
    assert board[0]["job"] == job["id"] and board[0]["rank"] == 1 and board[0]["user"] == "ada"
    assert [n["alive"] for n in status["nodes"]] == [True, True]
    assert cancelled["state"] in ("cancelled", "running")
    assert refused["detail"].startswith("missing, unknown or expired token")
