"""idl.framing.FramedTransport: big frames in linear time, small ones intact, TSocket errors."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from thrift.transport import TSocket, TTransport

from idl.framing import FramedTransport


def _pair(timeout_s: float = 5.0) -> tuple[FramedTransport, FramedTransport]:
    a, b = socket.socketpair()
    out = []
    for sock in (a, b):
        sock.settimeout(timeout_s)
        raw = TSocket.TSocket()
        raw.setHandle(sock)
        out.append(FramedTransport(raw, 256 * 1024 * 1024))
    return out[0], out[1]


@pytest.mark.parametrize("size", [1, 1000, 64 * 1024 + 3, 48 * 1024 * 1024])
def test_frames_arrive_whole_and_in_order(size):
    sender, receiver = _pair()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    # A 48 MB frame cannot sit in the socket buffer: send from a thread while reading.
    thread = threading.Thread(target=lambda: (sender.write(payload), sender.flush(),
                                              sender.write(b"next"), sender.flush()))
    began = time.monotonic()
    thread.start()
    got = receiver.readAll(size)
    assert receiver.readAll(4) == b"next"
    thread.join()
    assert got == payload
    assert time.monotonic() - began < 10  # quadratic copying took minutes at this size


def test_a_closed_peer_is_end_of_file_and_a_silent_one_times_out():
    sender, receiver = _pair(timeout_s=0.2)
    with pytest.raises(TTransport.TTransportException) as silent:
        receiver.readAll(1)
    assert silent.value.type == TTransport.TTransportException.TIMED_OUT
    sender.close()
    with pytest.raises(TTransport.TTransportException) as closed:
        receiver.readAll(1)
    assert closed.value.type == TTransport.TTransportException.END_OF_FILE


def test_an_oversized_frame_is_refused_before_it_is_read():
    a, b = socket.socketpair()
    raw = TSocket.TSocket()
    raw.setHandle(b)
    receiver = FramedTransport(raw, 1024)
    a.sendall((4096).to_bytes(4, "big"))
    with pytest.raises(TTransport.TTransportException) as big:
        receiver.readAll(1)
    assert big.value.type == TTransport.TTransportException.SIZE_LIMIT
    a.close()
    b.close()
