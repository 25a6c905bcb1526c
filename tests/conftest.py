"""Shared fixtures: real cluster processes that are always stopped, also when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import SHARED_DATA, LocalCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Factory: make_cluster(nodes=3, policy="load-aware", loads=[...], node_args=[...])."""
    clusters: list[LocalCluster] = []

    def make(
        nodes: int = 2,
        policy: str = "round-robin",
        loads: list[float] | None = None,
        node_args: tuple[str, ...] = ("--load-delay", "0"),
        coordinator_args: tuple[str, ...] = (),
    ) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster-{len(clusters)}")
        clusters.append(cluster)
        for i in range(nodes):
            cluster.add_node(loads[i] if loads else 0.0, *node_args)
        cluster.add_coordinator(policy, *coordinator_args)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def uci_letters() -> Path:
    """The real UCI letters file beside the repository, or skip saying why."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real UCI data not found at {SHARED_DATA} (only in the project workspace)")
    return SHARED_DATA
