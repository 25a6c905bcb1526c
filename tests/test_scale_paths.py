"""The coordinator's scale shortcuts behave exactly like the plain code they replace."""

from __future__ import annotations

import random

from coordinator.policies import NodeView, RandomPolicy, RoundRobin
from coordinator.registry import Registry, _view
from idl.rpc import Address


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fresh_views(registry: Registry) -> list[NodeView]:
    """What views() must equal: built from scratch, alive nodes in registration order."""
    return [_view(n) for n in registry._nodes.values() if n.alive]


def test_cached_views_match_fresh_ones_through_random_changes():
    rng = random.Random(7)
    registry = Registry(clock=FakeClock())
    addresses = [Address("h", p) for p in range(1, 13)]
    for address in addresses[:6]:
        registry.add(address)
    for step in range(3000):
        address = rng.choice(addresses)
        op = rng.randrange(7)
        if op == 0:
            registry.add(address)
        elif op == 1:
            registry.mark_dead(address, "test")
        elif op == 2:
            registry.mark_alive(address, {"load_probability": rng.random(),
                                          "recent_service_s": rng.random()})
        elif op == 3:
            registry.begin_task(address)
        elif op in (4, 5):
            registry.end_task(address, rng.choice([None, rng.random()]))
        if step % 3 == 0:  # sometimes read between changes, sometimes after several
            assert registry.views() == _fresh_views(registry)
    assert registry.views() == _fresh_views(registry)


def test_views_are_a_snapshot_not_a_live_list():
    registry = Registry()
    registry.add(Address("h", 1))
    before = registry.views()
    registry.begin_task("h:1")
    assert before[0].in_flight == 0 and registry.views()[0].in_flight == 1


def test_an_answered_task_postpones_the_alive_nodes_probe_but_not_a_dead_ones():
    clock = FakeClock()
    registry = Registry(probe_interval_s=1.0, clock=clock)
    registry.add(Address("h", 1))
    registry.add(Address("h", 2))
    assert len(registry.due_for_probe()) == 2
    registry.end_task("h:1", 0.01)  # h:1 just answered a task: no ping needed now
    assert registry.due_for_probe() == [Address("h", 2)]
    clock.now += 1.0
    assert len(registry.due_for_probe()) == 2  # one interval later it is probed again

    registry.mark_dead("h:2", "refused")
    registry.end_task("h:2", 0.01)  # a late answer from a dead node does not delay revival
    clock.now += 1.0
    assert Address("h", 2) in registry.due_for_probe()


def _plain_round_robin(nodes, exclude, last):
    addresses = [n.address for n in nodes]
    start = addresses.index(last) + 1 if last in addresses else 0
    for offset in range(len(nodes)):
        node = nodes[(start + offset) % len(nodes)]
        if node.address not in exclude:
            return node
    return None


def test_round_robin_with_its_position_hint_picks_as_the_plain_scan_does():
    rng = random.Random(3)
    everyone = [NodeView(f"h:{p}") for p in range(1, 9)]
    policy = RoundRobin()
    last = None
    for _ in range(2000):
        nodes = [n for n in everyone if rng.random() < 0.8] if rng.random() < 0.2 else everyone
        exclude = {rng.choice(everyone).address} if rng.random() < 0.3 else set()
        expected = _plain_round_robin(nodes, exclude, last)
        got = policy.pick(nodes, exclude)
        assert got == expected
        if got is not None:
            last = got.address


def test_random_without_exclusions_draws_the_same_sequence_as_with_an_empty_filter():
    nodes = [NodeView(f"h:{p}") for p in range(1, 50)]
    reference = random.Random(5)
    policy = RandomPolicy(5)
    for _ in range(200):
        assert policy.pick(nodes, set()) == reference.choice(list(nodes))
