"""Shared fixtures: real cluster processes that are always stopped, also when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import SHARED_DATA, ServerProcess, start_coordinator, start_node
from idl.rpc import Address


class Cluster:
    """The processes one test started; `make_cluster` stops them all afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[ServerProcess] = []
        self.coordinators: list[ServerProcess] = []

    def add_node(self, load_probability: float = 0.0, *extra: str) -> ServerProcess:
        node = start_node(self.workdir, load_probability, *extra)
        self.nodes.append(node)
        return node

    def add_coordinator(
        self, policy: str = "round-robin", *extra: str, nodes: list[Address] | None = None
    ) -> ServerProcess:
        addresses = [n.address for n in self.nodes] if nodes is None else nodes
        coordinator = start_coordinator(self.workdir, policy, addresses, *extra)
        self.coordinators.append(coordinator)
        return coordinator

    @property
    def coordinator(self) -> ServerProcess:
        return self.coordinators[0]

    def stop(self) -> None:
        for proc in [*self.coordinators, *self.nodes]:
            proc.stop()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Factory: make_cluster(nodes=3, policy="load-aware", loads=[...], node_args=[...])."""
    clusters: list[Cluster] = []

    def make(
        nodes: int = 2,
        policy: str = "round-robin",
        loads: list[float] | None = None,
        node_args: tuple[str, ...] = ("--load-delay", "0"),
        coordinator_args: tuple[str, ...] = (),
    ) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(clusters)}")
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
