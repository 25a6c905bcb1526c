"""Scheduling policies: small objects that pick a node from a snapshot of node views.

A policy never opens a connection and never sleeps; retries and deadlines live in the
round executor, which calls `pick` under one lock so policy state needs no locking of its own.
Each policy owns a seeded `random.Random`, so placements are reproducible for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class NodeView:
    """What a policy may know about one healthy node at the moment it picks."""

    address: str
    in_flight: int = 0  # tasks this coordinator has running on the node
    service_s: float | None = None  # recent time per task (None: never measured)
    load_probability: float = 0.0  # as the node last reported it


class Policy(Protocol):
    name: str
    may_decline: bool  # whether tasks sent under this policy let a loaded node reject them

    def pick(self, nodes: Sequence[NodeView], exclude: Collection[str]) -> NodeView | None:
        """The node for the next task, or None when every node is excluded."""
        ...


def _eligible(nodes: Sequence[NodeView], exclude: Collection[str]) -> Sequence[NodeView]:
    if not exclude:  # the common case; same sequence, so the same seeded choices
        return nodes
    return [n for n in nodes if n.address not in exclude]


class _SeededChoice:
    """A policy that chooses among the non-excluded nodes with its own seeded rng."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)

    def pick(self, nodes: Sequence[NodeView], exclude: Collection[str]) -> NodeView | None:
        eligible = _eligible(nodes, exclude)
        return self._choose(eligible, nodes) if eligible else None

    def _choose(self, eligible: Sequence[NodeView], nodes: Sequence[NodeView]) -> NodeView:
        raise NotImplementedError


class RandomPolicy(_SeededChoice):
    """Uniform over the healthy, non-excluded nodes."""

    name = "random"
    may_decline = False

    def _choose(self, eligible: Sequence[NodeView], nodes: Sequence[NodeView]) -> NodeView:
        return self._rng.choice(eligible)


class RoundRobin:
    """Cycles over the nodes in the order given, skipping excluded ones."""

    name = "round-robin"
    may_decline = False

    def __init__(self, seed: int = 1) -> None:
        self._last: str | None = None
        self._last_pos = -1  # where _last was in the previous call's list: O(1) when it is

    def pick(self, nodes: Sequence[NodeView], exclude: Collection[str]) -> NodeView | None:
        if not nodes:
            return None
        if 0 <= self._last_pos < len(nodes) and nodes[self._last_pos].address == self._last:
            start = self._last_pos + 1
        else:
            addresses = [n.address for n in nodes]
            start = addresses.index(self._last) + 1 if self._last in addresses else 0
        for offset in range(len(nodes)):
            pos = (start + offset) % len(nodes)
            node = nodes[pos]
            if node.address not in exclude:
                self._last, self._last_pos = node.address, pos
                return node
        return None


class LoadAware(_SeededChoice):
    """Least expected completion time: (in_flight + 1) * service time; ties by seeded rng.

    `service_s` is the registry's expected time a task occupies the node (steady time plus
    p times its load delay). A node never measured takes the mean of those that were, so
    new nodes get work without being flooded; with nothing measured at all, (1 + p) stands
    in for the service time, so the first round already leans away from loaded nodes.
    Tasks sent under this policy may be declined by a loaded node (the seed's semantics);
    the executor then tries another node.
    """

    name = "load-aware"
    may_decline = True

    def _choose(self, eligible: Sequence[NodeView], nodes: Sequence[NodeView]) -> NodeView:
        known = [n.service_s for n in nodes if n.service_s is not None]
        if known:
            default_s = sum(known) / len(known)
            costs = [
                (n.in_flight + 1) * (default_s if n.service_s is None else n.service_s)
                for n in eligible
            ]
        else:  # nothing measured yet: a loaded node's task is likely to take longer
            costs = [(n.in_flight + 1) * (1 + n.load_probability) for n in eligible]
        best = min(costs)
        # Equal costs (e.g. nothing measured yet) must not all land on the first node.
        limit = best * (1 + 1e-9) + 1e-12
        tied = [n for n, c in zip(eligible, costs, strict=True) if c <= limit]
        if len(tied) > 1 and best == 0.0:
            least = min(n.in_flight for n in tied)
            tied = [n for n in tied if n.in_flight == least]
        return self._rng.choice(tied)


POLICIES: dict[str, type] = {
    "random": RandomPolicy,
    "load-aware": LoadAware,
    "round-robin": RoundRobin,
}
# The seed's command line numbered them; "load-balancing" was its name for load-aware.
ALIASES = {"1": "random", "2": "load-aware", "3": "round-robin", "load-balancing": "load-aware"}


def policy_name(text: str) -> str:
    """Canonical policy name for a name or number; ValueError listing the choices otherwise."""
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    if key not in POLICIES:
        choices = ", ".join([*POLICIES, "1", "2", "3"])
        raise ValueError(f"unknown policy {text!r}; choose one of {choices}")
    return key


def make_policy(text: str, seed: int = 1) -> Policy:
    """A fresh policy object for a name or number, seeded."""
    return POLICIES[policy_name(text)](seed)
