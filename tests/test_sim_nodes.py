"""scripts/sim_nodes.py: many real ComputeNode endpoints from one process, for scale benches."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from sim_nodes import start_sim_nodes  # noqa: E402

from idl.gen import ComputeNode  # noqa: E402
from idl.gen.ttypes import ShardMissing, ShardRef, ShardTask, TrainConfig  # noqa: E402
from idl.rpc import connect  # noqa: E402
from idl.tensors import decode_tensors, encode_tensors  # noqa: E402

SHARD = b"1,2,3,0\n4,5,6,1\n"


@pytest.fixture
def sim(tmp_path):
    procs = []

    def make(count: int, delay_s: float = 0.0):
        proc, addresses = start_sim_nodes(tmp_path, count, delay_s)
        procs.append(proc)
        return proc, addresses

    yield make
    for proc in procs:
        proc.stop()


def _task(digest: str, weights) -> ShardTask:
    return ShardTask(job_id="j", round=1, shard_index=0,
                     shard=ShardRef(name="s", digest=digest, n_rows=2, n_bytes=len(SHARD)),
                     weights=weights, config=TrainConfig(epochs=1, eta=0.1))


def test_every_endpoint_answers_and_needs_its_own_shard_upload(sim):
    proc, addresses = sim(20)
    assert len(set(addresses)) == 20 and addresses[0] == proc.address
    digest = hashlib.sha256(SHARD).hexdigest()
    weights = encode_tensors([np.ones(s) for s in ((3, 2), (2,), (2, 2), (2,))])
    first, last = (connect(ComputeNode.Client, a) for a in (addresses[0], addresses[-1]))
    try:
        with pytest.raises(ShardMissing) as missing:
            first.client.train(_task(digest, weights))
        assert missing.value.digest == digest
        first.client.put_shard(digest, SHARD, "")
        result = first.client.train(_task(digest, weights))
        assert result.node == str(addresses[0]) and result.n_samples == 2
        deltas = decode_tensors(result.delta)
        assert [d.shape for d in deltas] == [(3, 2), (2,), (2, 2), (2,)]
        assert all((d == 0).all() for d in deltas)
        assert first.client.load("").shards_cached == 1
        # Another endpoint of the same process has its own shard set.
        assert last.client.missing_shards([digest], "") == [digest]
        assert last.client.ping() is True
    finally:
        first.close()
        last.close()


def test_train_answers_after_the_set_delay(sim):
    _, addresses = sim(2, delay_s=0.150)
    digest = hashlib.sha256(SHARD).hexdigest()
    conn = connect(ComputeNode.Client, addresses[1])
    try:
        conn.client.put_shard(digest, SHARD, "")
        began = time.monotonic()
        conn.client.train(_task(digest, encode_tensors(
            [np.zeros(s) for s in ((3, 1), (1,), (1, 2), (2,))])))
        assert time.monotonic() - began >= 0.15
        began = time.monotonic()
        conn.client.ping()  # only train() is delayed
        assert time.monotonic() - began < 0.15
    finally:
        conn.close()


def test_sigterm_stops_it_cleanly(sim):
    proc, _ = sim(3)
    proc.stop()
    assert proc.popen.returncode == 0
    assert "event=stopped" in proc.log()
