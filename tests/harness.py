"""The tests' view of scripts/local_cluster.py: one launcher for tests, demo and benchmarks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from local_cluster import (  # noqa: E402
    REPO,
    SHARED_DATA,
    LocalCluster,
    Pki,
    ServerProcess,
    start_coordinator,
    start_gateway,
    start_node,
    start_server,
    throwaway_pki,
)

__all__ = [
    "REPO",
    "SHARED_DATA",
    "LocalCluster",
    "Pki",
    "ServerProcess",
    "start_coordinator",
    "start_gateway",
    "start_node",
    "start_server",
    "throwaway_pki",
]
