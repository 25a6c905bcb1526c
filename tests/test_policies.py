"""Scheduling policies over node snapshots: pure objects, no sockets."""

from __future__ import annotations

from collections import Counter

import pytest

from coordinator.policies import (
    POLICIES,
    LoadAware,
    NodeView,
    RandomPolicy,
    RoundRobin,
    make_policy,
    policy_name,
)

NODES = [NodeView(f"127.0.0.1:{9000 + i}") for i in range(3)]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("1", "random"),
        ("2", "load-aware"),
        ("3", "round-robin"),
        ("random", "random"),
        ("Load-Aware", "load-aware"),
        ("load-balancing", "load-aware"),
        (" round-robin ", "round-robin"),
    ],
)
def test_policy_names_and_seed_numbers_are_accepted(text, name):
    assert policy_name(text) == name
    assert make_policy(text).name == name


@pytest.mark.parametrize("text", ["0", "4", "fastest", ""])
def test_unknown_policy_is_rejected_with_the_choices(text):
    with pytest.raises(ValueError, match="choose one of random, load-aware, round-robin"):
        policy_name(text)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_returns_none_when_all_are_excluded(name):
    policy = make_policy(name)
    assert policy.pick(NODES, {n.address for n in NODES}) is None
    assert policy.pick([], set()) is None


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_avoids_excluded_nodes(name):
    policy = make_policy(name)
    picks = {policy.pick(NODES, {NODES[1].address}).address for _ in range(50)}
    assert NODES[1].address not in picks
    assert picks <= {NODES[0].address, NODES[2].address}


def test_round_robin_cycles_evenly():
    policy = RoundRobin()
    picks = [policy.pick(NODES, set()).address for _ in range(9)]
    assert picks == [n.address for n in NODES] * 3


def test_round_robin_continues_after_a_node_disappears():
    policy = RoundRobin()
    assert policy.pick(NODES, set()) == NODES[0]
    assert policy.pick([NODES[0], NODES[2]], set()) == NODES[2]
    assert policy.pick(NODES, set()) == NODES[0]


def test_random_is_reproducible_for_a_seed_and_differs_across_seeds():
    def picks(seed):
        policy = RandomPolicy(seed)
        return [policy.pick(NODES, set()).address for _ in range(40)]

    assert picks(7) == picks(7)
    assert picks(7) != picks(8)
    assert set(picks(7)) == {n.address for n in NODES}


def test_load_aware_prefers_least_expected_completion_time():
    nodes = [
        NodeView("a:1", in_flight=0, service_s=10.0),  # (0+1)*10 = 10
        NodeView("b:1", in_flight=2, service_s=1.0),  # (2+1)*1 = 3
        NodeView("c:1", in_flight=1, service_s=2.0),  # (1+1)*2 = 4
    ]
    assert LoadAware().pick(nodes, set()).address == "b:1"
    assert LoadAware().pick(nodes, {"b:1"}).address == "c:1"


def test_load_aware_spreads_untimed_nodes_by_in_flight_count():
    nodes = [NodeView("a:1", in_flight=1), NodeView("b:1", in_flight=0)]
    assert {LoadAware(s).pick(nodes, set()).address for s in range(20)} == {"b:1"}


def test_load_aware_breaks_ties_with_its_seeded_rng():
    nodes = [NodeView("a:1", service_s=1.0), NodeView("b:1", service_s=1.0)]

    def picks(seed):
        policy = LoadAware(seed)
        return [policy.pick(nodes, set()).address for _ in range(30)]

    assert picks(3) == picks(3)
    assert set(Counter(picks(3))) == {"a:1", "b:1"}


def test_load_aware_gives_an_unmeasured_node_the_mean_service_time():
    nodes = [
        NodeView("slow:1", service_s=4.0),
        NodeView("fast:1", service_s=2.0),
        NodeView("new:1", service_s=None),  # treated as 3.0
    ]
    assert LoadAware().pick(nodes, set()).address == "fast:1"
    assert LoadAware().pick(nodes, {"fast:1"}).address == "new:1"


def test_only_load_aware_lets_nodes_decline():
    assert [make_policy(n).may_decline for n in POLICIES] == [False, True, False]
