"""Work stealing: which waiting tasks to take from busy nodes for the idle ones. Pure.

Every task of a round is in flight at once (right for latency), so a node can hold tasks it
has not started: queued behind another for a worker, or sleeping its load delay (the delay
counts as "not started"). When a node is idle (nothing in flight) while such a task has
waited longer than `wait_limit_s` plus the idle node's expected service time (NodeView's
service_s: its steady time plus p times its load delay; a cancelled task starts over
there, load delay draw and all, so a task merely a little into a short delay on a node no
more loaded than the idle one stays), the coordinator cancels it on its node (the node's
`cancel` RPC answers whether it was taken back before it started) and sends it to the idle
node. A task its node says it has started is not cancelled: once it has run longer than
`duplicate_limit_s`, a copy starts on an idle node and the first result wins, as stragglers'
do (results are bit for bit the same wherever a shard trains). A task that every node has
declined (load-aware: a loaded node may decline) and that is backing off before asking
again is waiting too: an idle node left over wakes it to ask that node at once.

The limits keep stealing from costing time where nodes are merely a little uneven (a task
behind one short task is not worth a cancel and a new round trip, at 200 ms RTT least of
all): the executor derives them from the round's own finished tasks, by wait_limit_s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.policies import NodeView


@dataclass(frozen=True)
class Waiting:
    """A task of the round whose current attempt is in flight on `node`."""

    index: int
    node: str
    age_s: float  # since its current attempt was sent
    started: bool = False  # its node said lately it has started training it
    duplicated: bool = False  # a copy runs elsewhere already (a straggler's or a steal's)


@dataclass(frozen=True)
class Steal:
    """Take task `index` from `source` to the idle `target`: by cancel, or by a duplicate;
    or (`wake`, no source) wake it from its backoff to ask `target` at once."""

    index: int
    source: str
    target: str
    duplicate: bool = False
    wake: bool = False


def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def wait_limit_s(
    steady_s: Sequence[float], overhead_s: Sequence[float], factor: float, min_s: float
) -> float:
    """How long a task may wait on a busy node before an idle one takes it.

    `factor` times the larger of the median steady time of the round's finished tasks on
    their nodes (training and reply: no queue, no load delay) and the median overhead of a
    call (the coordinator's round trip less the node's own time: network and protocol; a
    steal costs two calls, a cancel and a new train), at least `min_s`. A task that has
    waited that long is held up by a queue or a load delay, and a steal pays for itself.
    """
    return max(min_s, factor * max(_median(steady_s), _median(overhead_s)))


def plan_steals(
    nodes: Sequence[NodeView],
    waiting: Sequence[Waiting],
    wait_limit_s: float,
    duplicate_limit_s: float,
    backing_off: Sequence[int] = (),
) -> list[Steal]:
    """At most one steal per idle node: cancels first, then wakes of the tasks in
    `backing_off` (declined everywhere, in that order), then duplicates of started tasks.

    `nodes` are the healthy nodes (in_flight counts every task sent there); a node is idle
    with nothing in flight. Cancels take from the most crowded node first (its queue is
    surely waiting), the latest sent there first (likely the last in its queue), each past
    its limit plus the target's expected service time (never measured: the mean of those
    measured times 1 + its load probability); targets the quickest idle nodes first, then
    the least loaded, then in the order of `nodes`. A task on a node not among `nodes`
    (dead) is the failure path's.
    """
    if not any(n.in_flight == 0 for n in nodes):
        return []
    known = [n.service_s for n in nodes if n.service_s is not None]
    default_s = sum(known) / len(known) if known else 0.0

    def cost(n: NodeView) -> float:  # as LoadAware: a node never measured, by its p
        return n.service_s if n.service_s is not None else default_s * (1 + n.load_probability)

    idle = sorted((n for n in nodes if n.in_flight == 0),
                  key=lambda n: (cost(n), n.load_probability))
    in_flight = {n.address: n.in_flight for n in nodes}
    cancels = [w for w in waiting if not w.started and in_flight.get(w.node, 0) > 0]
    copies = [w for w in waiting
              if w.started and not w.duplicated and in_flight.get(w.node, 0) > 0]
    wakes = list(backing_off)
    plan: list[Steal] = []
    for target in idle:
        cost_s = cost(target)
        ready = [w for w in cancels if w.age_s > wait_limit_s + cost_s]
        if ready:
            best = min(ready, key=lambda w: (-in_flight[w.node], w.age_s, w.index))
            cancels.remove(best)
            plan.append(Steal(best.index, best.node, target.address))
            in_flight[best.node] -= 1  # spread the next steals over the crowded nodes
        elif wakes:
            plan.append(Steal(wakes.pop(0), "", target.address, wake=True))
        else:
            late = [w for w in copies if w.age_s > duplicate_limit_s + cost_s]
            if late:
                oldest = min(late, key=lambda w: (-w.age_s, w.index))
                copies.remove(oldest)
                plan.append(Steal(oldest.index, oldest.node, target.address, duplicate=True))
    return plan
