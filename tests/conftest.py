"""Shared fixtures: real cluster processes that are always stopped, also when a test fails.

Also the one way a test says what it needs: `require(condition, reason)` in a test or
fixture, or `@pytest.mark.needs(condition, reason)` on a test. Locally an unmet need skips
the test with its reason; under CI (the environment variable CI set, as CI services do) it
fails it, because CI runs as root, installs every tool (.ci/run) and has ../shared beside
the clone, so a skip there would be a test that silently never ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import SHARED_DATA, LocalCluster


def in_ci() -> bool:
    """True when the environment variable CI is set to anything but "", "0" or "false"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require(condition: object, reason: str) -> None:
    """Go on if `condition` holds; else skip saying `reason`, or fail under CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (a skip is an error under CI: CI is set)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(condition, reason): run only if condition holds; skip locally, "
        "fail under CI otherwise"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        require(*mark.args, **mark.kwargs)


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
    require(SHARED_DATA.exists(),
            f"real UCI data not found at {SHARED_DATA} (only in the project workspace)")
    return SHARED_DATA


def wait_for(predicate: Callable[[], Any], what: str = "the condition", timeout_s: float = 20.0,
             *, interval_s: float = 0.05,
             tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `predicate` until it returns something truthy, and return that: a readiness check,
    never a fixed sleep. After `timeout_s` the test fails naming `what`. Exceptions of the
    `tolerate` types (a page mid-update, a server not up yet) count as not yet."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except tolerate as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}"
                                 + (f" (last: {last})" if last is not None else ""))
        time.sleep(interval_s)
