"""Wire plumbing: tensor codec, event lines, and a server that survives bad peers."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from idl.events import format_event
from idl.gen import ComputeNode
from idl.gen.ttypes import InvalidRequest, NodeLoad, Tensor
from idl.rpc import Address, ConnectionPool, ThriftServer, connect
from idl.tensors import TensorError, decode_tensor, encode_tensor


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

    def load(self) -> NodeLoad:
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
    assert conn.client.load().tasks_in_flight == 7
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


def test_declared_errors_pass_through_the_pool_intact(server) -> None:
    pool = ConnectionPool(ComputeNode.Client)

    with pytest.raises(InvalidRequest, match="digest abc does not match"):
        pool.call(server.address, 2.0, lambda client: client.put_shard("abc", b"", ""))

    assert pool.call(server.address, 2.0, lambda client: client.ping())
    pool.close()
