"""Wire plumbing: tensor codec, event lines, and a server that survives bad peers."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from idl.framing import FramedTransport
from idl.gen import ComputeNode
from idl.gen.ttypes import (
    InvalidRequest,
    NodeLoad,
    RoundRequest,
    RoundResult,
    ShardRef,
    ShardTask,
    TaskResult,
    Tensor,
    TrainConfig,
)
from idl.protocol import protocol_factory
from idl.rpc import Address, ConnectionPool, ThriftServer, connect
from idl.tensors import (
    TensorError,
    all_finite,
    decode_tensor,
    decode_tensors,
    encode_tensor,
    encode_tensors,
)
from runtime.events import format_event


def test_tensor_round_trip_is_bitwise() -> None:
    array = np.random.default_rng(3).standard_normal((7, 5))

    decoded = decode_tensor(encode_tensor(array))

    assert decoded.tobytes() == array.tobytes()
    assert decoded.flags.writeable and decoded.flags.c_contiguous


def test_tensor_bytes_are_little_endian_c_order() -> None:
    array = np.arange(6, dtype=">f8").reshape(2, 3).T  # big-endian, Fortran order

    tensor = encode_tensor(array)

    assert tensor.shape == [3, 2]
    assert tensor.data == np.ascontiguousarray(array, dtype="<f8").tobytes()


@pytest.mark.parametrize(
    ("tensor", "complaint"),
    [
        (Tensor(shape=[2, 2], data=b"\0" * 24), "needs 32 bytes, got 24"),
        (Tensor(shape=[-1], data=b""), "negative dimension"),
        (Tensor(shape=[1], data=struct.pack("<d", float("nan"))), "NaN"),
    ],
)
def test_malformed_tensors_are_refused(tensor: Tensor, complaint: str) -> None:
    with pytest.raises(TensorError, match=complaint):
        decode_tensor(tensor, name="w1")


def test_events_are_one_line_of_key_values() -> None:
    line = format_event("task_done", round=3, node="127.0.0.1:9091", reason="timed out\nagain")

    assert line == 'event=task_done round=3 node=127.0.0.1:9091 reason="timed out\\nagain"'


def test_address_parsing() -> None:
    assert Address.parse("127.0.0.1:9090") == Address("127.0.0.1", 9090)
    assert Address.parse(" localhost,9091 ") == Address("localhost", 9091)
    for bad in ["nohost", ":90", "h:0", "h:70000", "h:x"]:
        with pytest.raises(ValueError):
            Address.parse(bad)


class _Handler:
    def ping(self) -> bool:
        return True

    def load(self, token: str = "") -> NodeLoad:
        return NodeLoad(tasks_in_flight=7)

    def put_shard(self, digest: str, data: bytes, token: str) -> None:
        raise InvalidRequest(message=f"digest {digest} does not match")


@pytest.fixture
def server():
    srv = ThriftServer(ComputeNode.Processor(_Handler()), name="test")
    srv.start()
    yield srv
    srv.stop()


def test_server_keeps_serving_past_garbage_forged_lengths_and_idle_peers(server) -> None:
    peer = (server.address.host, server.address.port)
    idle = [socket.create_connection(peer) for _ in range(10)]
    garbage = socket.create_connection(peer)
    garbage.sendall(b"\x13\x37garbage" * 100)
    forged = socket.create_connection(peer)
    forged.sendall(struct.pack("!i", 2**31 - 1) + b"\x80\x01")

    conn = connect(ComputeNode.Client, server.address, timeout_s=2.0)
    started = time.perf_counter()
    assert conn.client.load("").tasks_in_flight == 7
    assert time.perf_counter() - started < 1.0
    conn.close()
    for s in [*idle, garbage, forged]:
        s.close()


def test_pool_reuses_connections_and_drops_broken_ones(server) -> None:
    pool = ConnectionPool(ComputeNode.Client)
    with pool.connection(server.address, 2.0) as first:
        pass
    with pool.connection(server.address, 2.0) as second:
        assert second is first
    with pytest.raises(RuntimeError), pool.connection(server.address, 2.0):
        raise RuntimeError("the call failed half-way")
    with pool.connection(server.address, 2.0) as third:
        assert third is not first
    pool.close()


def test_pool_skips_a_connection_the_server_let_go_while_it_was_idle() -> None:
    srv = ThriftServer(ComputeNode.Processor(_Handler()), name="full", max_connections=2)
    srv.start()
    pool = ConnectionPool(ComputeNode.Client)
    try:
        assert pool.call(srv.address, 2.0, lambda client: client.ping())  # idle in the pool
        busy = connect(ComputeNode.Client, srv.address, 2.0)
        assert busy.client.ping()
        newcomer = connect(ComputeNode.Client, srv.address, 2.0)  # the pooled one gives way
        assert newcomer.client.ping()
        with pool.connection(srv.address, 2.0) as conn:
            assert conn.client.ping()
        busy.close()
        newcomer.close()
    finally:
        pool.close()
        srv.stop()


def test_declared_errors_pass_through_the_pool_intact(server) -> None:
    pool = ConnectionPool(ComputeNode.Client)

    with pytest.raises(InvalidRequest, match="digest abc does not match"):
        pool.call(server.address, 2.0, lambda client: client.put_shard("abc", b"", ""))

    assert pool.call(server.address, 2.0, lambda client: client.ping())
    pool.close()


# --- bulk tensors: coded in Python by reference, the rest by thrift's C codec -----------------


def test_read_only_decode_is_a_view_and_the_writable_one_a_copy() -> None:
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    tensor = encode_tensor(array)

    view = decode_tensor(tensor, writable=False)
    copy = decode_tensor(tensor)

    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(tensor.data))
    assert copy.flags.writeable and not np.shares_memory(copy, np.frombuffer(tensor.data))
    assert view.tobytes() == copy.tobytes() == array.tobytes()


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0, 3.5], True),
        ([1e308, 1e308, -1e308], True),  # the sum overflows: the exact check must decide
        ([1.0, float("nan")], False),
        ([float("inf"), float("-inf")], False),
        ([0.0, float("-inf")], False),
    ],
)
def test_all_finite_is_exact(values: list[float], finite: bool) -> None:
    assert all_finite(np.array(values)) is finite


class _EchoNode:
    """train() returns the weights it got as the delta and records the types it received."""

    def __init__(self) -> None:
        self.received: list[type] = []

    def train(self, task: ShardTask) -> TaskResult:
        self.received = [type(t.data) for t in task.weights]
        return TaskResult(delta=task.weights, n_samples=len(task.weights), node="echo")

    def ping(self) -> bool:
        return True


@pytest.fixture
def echo():
    handler = _EchoNode()
    srv = ThriftServer(ComputeNode.Processor(handler), name="echo")
    srv.start()
    yield srv, handler
    srv.stop()


def test_bulk_tensors_cross_two_hops_bit_for_bit_as_views(echo) -> None:
    srv, handler = echo
    rng = np.random.default_rng(3)
    # Bulk and small tensors mixed, the first one small: each struct decides for itself.
    arrays = [rng.normal(size=(3,)), rng.normal(size=(300, 100)), rng.normal(size=(5, 2)),
              rng.normal(size=(200_000,))]
    task = ShardTask(job_id="j", shard=ShardRef(name="s", digest="0" * 64),
                     weights=encode_tensors(arrays), config=TrainConfig(epochs=1, eta=0.1))
    conn = connect(ComputeNode.Client, srv.address, timeout_s=10.0)
    try:
        first = conn.client.train(task)
        # Forward what came back (views of the received frame) once more, as a coordinator does.
        second = conn.client.train(ShardTask(job_id="j", shard=task.shard, weights=first.delta,
                                             config=task.config))
    finally:
        conn.close()

    assert [type(t.data) for t in first.delta] == [bytes, memoryview, bytes, memoryview]
    assert handler.received == [bytes, memoryview, bytes, memoryview]
    for got, want in zip(decode_tensors(second.delta), arrays, strict=True):
        assert got.tobytes() == want.tobytes()
    assert second.node == "echo" and second.n_samples == 4


def test_bulk_aware_protocol_writes_the_same_bytes_as_thrift() -> None:
    rng = np.random.default_rng(4)
    request = RoundRequest(job_id="j", round=2, weights=encode_tensors(
        [rng.normal(size=(100, 200)), rng.normal(size=200), rng.normal(size=(200, 3)),
         rng.normal(size=3)]),
        shards=[ShardRef(name=f"s{i}", digest="1" * 64) for i in range(5)],
        config=TrainConfig(epochs=1, eta=0.1))
    ours, theirs = TTransport.TMemoryBuffer(), TTransport.TMemoryBuffer()

    request.write(protocol_factory().getProtocol(ours))
    request.write(TBinaryProtocol.TBinaryProtocol(theirs))

    assert ours.getvalue() == theirs.getvalue()


def test_a_long_list_of_small_tensors_is_looked_at_briefly_and_decoded_by_c() -> None:
    small = encode_tensors([np.ones((4, 2)), np.ones(2), np.ones((2, 3)), np.ones(3)])
    bulk = encode_tensors([np.ones((400, 100)), np.ones(100), np.ones((100, 3)), np.ones(3)])
    # The one bulk delta lies beyond the look: C decodes it all, correctly.
    result = RoundResult(results=[TaskResult(delta=small, n_samples=1)] * 4999
                         + [TaskResult(delta=bulk, n_samples=2)])
    buf = TTransport.TMemoryBuffer()
    result.write(TBinaryProtocol.TBinaryProtocol(buf))
    a, b = socket.socketpair()
    raw = TSocket.TSocket()
    raw.setHandle(b)
    receiver = FramedTransport(raw)
    frame = buf.getvalue()
    sender = threading.Thread(target=lambda: a.sendall(struct.pack("!i", len(frame)) + frame))
    sender.start()
    receiver.readFrame()
    sender.join()

    began = time.perf_counter()
    assert not receiver.holds_bulk_binary(RoundResult.thrift_spec)
    assert time.perf_counter() - began < 0.05  # a bounded look, not a walk of 5,000 results
    decoded = RoundResult()
    decoded.read(protocol_factory().getProtocol(receiver))
    assert len(decoded.results) == 5000
    assert all(type(t.data) is bytes for t in decoded.results[-1].delta)
    assert decode_tensors(decoded.results[-1].delta)[0].tobytes() == np.ones((400, 100)).tobytes()
    a.close()
    b.close()
