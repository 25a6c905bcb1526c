"""FedProx on a real compute node: TrainConfig.prox_mu reaches the kernels, a bad one is refused.

The client's --prox-mu is not needed here: the task is built by hand and sent to a node
process on loopback, as the coordinator would send it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from test_compute_node import digest_of, make_shard, make_task, started_nodes

from idl.gen import ComputeNode
from idl.gen.ttypes import InvalidRequest
from idl.tensors import decode_tensors
from mlcore import reference
from mlcore.data import parse_data
from mlcore.model import MAX_PROX_MU, init_params, train

D, H, K = 16, 24, 5


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[ComputeNode.Client]:
    """One node (no load, no delay) for every test here; stopped by PID at the end."""
    with started_nodes(tmp_path_factory.mktemp("fedprox-node")) as start:
        yield start(0.0, "--load-delay", "0")[1]


@pytest.mark.parametrize(("batch_size", "momentum"), [(0, 0.0), (32, 0.5)])
def test_prox_mu_task_trains_the_references_proximal_steps(node, batch_size, momentum):
    """A ShardTask with prox_mu > 0: the node's delta is the numpy reference's FedProx delta
    (within the kernels' tolerance), the bits of in-process mlcore training with the same
    prox_mu, and not the delta of prox_mu = 0, which moves the weights further."""
    data = make_shard(n_rows=300, d=D, k=K, seed=12)
    node.put_shard(digest_of(data), data, "")
    shard = parse_data(data, "local")
    params = init_params(D, H, K, seed=4, scale=0.1)
    mu = 20.0
    settings = dict(epochs=6, eta=1e-3, batch_size=batch_size, momentum=momentum, seed=9)

    prox = decode_tensors(node.train(make_task(data, params, prox_mu=mu, **settings)).delta)
    plain = decode_tensors(node.train(make_task(data, params, **settings)).delta)

    want = reference.train(params, shard.x, shard.y, prox_mu=mu, **settings)
    in_process = train(params, shard.x, shard.y, prox_mu=mu, **settings).params
    for got, ref, mine, old in zip(prox, want.tensors(), in_process.tensors(),
                                   params.tensors(), strict=True):
        ref_delta = ref - old
        assert np.max(np.abs(got - ref_delta)) <= 1e-9 * np.max(np.abs(ref_delta))
        assert got.tobytes() == (mine - old).tobytes()
    for with_mu, without in zip(prox, plain, strict=True):  # every tensor, biases included
        assert np.linalg.norm(with_mu) < np.linalg.norm(without)
        assert np.max(np.abs(with_mu - without)) > 1e-3 * np.max(np.abs(without))


def test_prox_mu_zero_on_the_wire_is_the_plain_task_bit_for_bit(node):
    data = make_shard(n_rows=200, d=D, k=K, seed=13)
    node.put_shard(digest_of(data), data, "")
    params = init_params(D, H, K, seed=5, scale=0.1)

    zero = node.train(make_task(data, params, epochs=4, eta=1e-3, prox_mu=0.0))
    unset = node.train(make_task(data, params, epochs=4, eta=1e-3))

    assert [t.data for t in zero.delta] == [t.data for t in unset.delta]


@pytest.mark.parametrize(
    ("prox_mu", "eta"),
    [(-1.0, 1e-3), (-math.inf, 1e-3), (math.nan, 1e-3), (math.inf, 1e-3),
     (MAX_PROX_MU * 2, 1e-9), (2000.0, 1e-3)],
)
def test_bad_prox_mu_is_invalid_request_naming_it(node, prox_mu, eta):
    """Negative, non-finite, beyond the bound, or pulling past the round's weights
    (prox_mu * eta > 1): a declared InvalidRequest naming config.prox_mu; the node serves on."""
    data = make_shard(n_rows=40, d=D, k=K, seed=14)
    node.put_shard(digest_of(data), data, "")

    with pytest.raises(InvalidRequest) as error:
        node.train(make_task(data, init_params(D, H, K, seed=1), eta=eta, prox_mu=prox_mu))

    assert "config.prox_mu" in error.value.message
    assert node.ping()

