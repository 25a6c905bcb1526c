"""idl.framing.FramedTransport: big frames in linear time, small ones intact, TSocket errors."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from idl.framing import FrameBudget, FramedTransport
from idl.gen.ttypes import ShardRef
from idl.protocol import protocol_factory


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


# --- paths of the receive side no other test reaches -------------------------------------

KIB = 1024
pytestmark = pytest.mark.timeout(30)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _server_side(sock: socket.socket, budget: FrameBudget | None = None,
                 frame_timeout_s: float = 5.0, idle_timeout_s: float = 5.0) -> FramedTransport:
    """A receiving transport set up as ThriftServer sets up its connections."""
    sock.settimeout(idle_timeout_s)
    raw = TSocket.TSocket()
    raw.setHandle(sock)
    return FramedTransport(raw, 256 * 1024 * 1024, budget=budget,
                           frame_timeout_s=frame_timeout_s, idle_timeout_s=idle_timeout_s)


class _TinyReads(socket.socket):
    """A real socket whose every receive takes at most 7 bytes."""

    def recv(self, n: int, *flags: int) -> bytes:
        return super().recv(min(n, 7), *flags)

    def recv_into(self, buf, n: int = 0, *flags: int) -> int:
        return super().recv_into(buf, min(n or len(buf), 7), *flags)


def test_pipelined_frames_in_one_read_come_out_one_by_one():
    a, b = socket.socketpair()
    receiver = _server_side(b)
    a.sendall(_frame(b"first") + _frame(b"") + _frame(b"third" * 100) + _frame(b"x"))

    got = []
    for size in (5, 500, 1):
        receiver.readFrame()
        got.append(receiver.read(size))

    assert got == [b"first", b"third" * 100, b"x"]  # the empty frame reads as nothing
    a.close()


def test_read_view_is_a_read_only_view_of_the_frame_and_survives_the_next_frame():
    a, b = socket.socketpair()
    receiver = _server_side(b)
    bulk = bytes(range(256)) * 1024  # 256 KiB: the grown-buffer path
    thread = threading.Thread(target=lambda: a.sendall(_frame(b"head" + bulk) + _frame(b"next")))
    thread.start()

    assert receiver.readAll(4) == b"head"
    view = receiver.read_view(len(bulk))
    receiver.release_read_frame()
    assert receiver.readAll(4) == b"next"
    thread.join()

    assert view.readonly and bytes(view) == bulk
    with pytest.raises(TypeError):
        view[0] = 1
    a.close()


def test_read_view_across_frames_joins_them():
    a, b = socket.socketpair()
    receiver = _server_side(b)
    a.sendall(_frame(b"0123456789") + _frame(b"abcdef"))

    assert receiver.readAll(6) == b"012345"
    view = receiver.read_view(8)

    assert bytes(view) == b"6789abcd"
    assert receiver.readAll(2) == b"ef"
    a.close()


def test_cstringio_refill_lets_the_c_decoder_read_a_struct_split_over_frames():
    a, b = socket.socketpair()
    receiver = _server_side(b)
    ref = ShardRef(name="train_3.txt", digest="ab" * 32, n_rows=1234, n_bytes=56789)
    out = TTransport.TMemoryBuffer()
    ref.write(TBinaryProtocol.TBinaryProtocol(out))
    encoded = out.getvalue()
    a.sendall(_frame(encoded[:9]) + _frame(encoded[9:30]) + _frame(encoded[30:]))

    decoded = ShardRef()
    decoded.read(protocol_factory().getProtocol(receiver))  # thrift's C codec: no bulk binary

    assert decoded == ref
    a.close()


def test_a_frame_received_seven_bytes_at_a_time_arrives_whole():
    a, b = socket.socketpair()
    tiny = _TinyReads(b.family, b.type, fileno=b.detach())
    budget = FrameBudget(16 * 1024 * 1024)
    receiver = _server_side(tiny, budget)
    payload = bytes(range(251)) * 800  # 200 KB: the buffer grows twice on the way
    thread = threading.Thread(target=lambda: a.sendall(_frame(payload) + _frame(b"tail")))
    thread.start()

    got = receiver.readAll(len(payload))
    thread.join()

    assert got == payload
    assert budget.used_bytes == len(payload)  # 64 -> 128 KiB -> the frame's size, not more
    receiver.release_read_frame()
    assert budget.used_bytes == 0  # read whole: its bytes are back in the budget
    assert receiver.readAll(4) == b"tail"
    a.close()


def test_a_peer_announcing_a_huge_frame_commits_only_about_twice_what_it_sent():
    a, b = socket.socketpair()
    budget = FrameBudget(1024 * 1024 * 1024)
    receiver = _server_side(b, budget, frame_timeout_s=1.0)
    errors: list[TTransport.TTransportException] = []

    def receive() -> None:
        try:
            receiver.readFrame()
        except TTransport.TTransportException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    a.sendall((250 * 1024 * 1024).to_bytes(4, "big") + b"x" * (300 * KIB))
    deadline = time.monotonic() + 5
    while budget.used_bytes < 300 * KIB and time.monotonic() < deadline:
        time.sleep(0.005)
    held = budget.used_bytes
    thread.join(timeout=5)

    assert 300 * KIB <= held <= 600 * KIB  # 300 KiB sent: the buffer doubled, not 250 MB
    assert errors and errors[0].type == TTransport.TTransportException.TIMED_OUT
    assert budget.used_bytes == 0  # the half frame was dropped with its connection's error
    a.close()


def test_a_trickled_frame_loses_its_connection_at_the_frame_deadline():
    a, b = socket.socketpair()
    receiver = _server_side(b, FrameBudget(64 * 1024 * 1024), frame_timeout_s=0.6)
    stop = threading.Event()

    def trickle() -> None:
        a.sendall((1024 * 1024).to_bytes(4, "big"))
        while not stop.wait(0.05):  # a byte every 50 ms: each recv returns, none times out
            try:
                a.sendall(b"x")
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    began = time.monotonic()
    try:
        with pytest.raises(TTransport.TTransportException) as late:
            receiver.readFrame()
        elapsed = time.monotonic() - began
    finally:
        stop.set()
        thread.join()

    assert late.value.type == TTransport.TTransportException.TIMED_OUT
    assert "within 0.6s" in str(late.value)
    assert 0.5 < elapsed < 1.5
    a.close()


def test_a_silent_connection_waits_the_idle_timeout_not_the_frame_deadline():
    a, b = socket.socketpair()
    receiver = _server_side(b, frame_timeout_s=0.1, idle_timeout_s=0.5)
    seen_idle = []
    thread = threading.Thread(target=lambda: (time.sleep(0.3), seen_idle.append(
        receiver.idle_since is not None), a.sendall(_frame(b"late but fine"))))
    thread.start()

    receiver.readFrame()
    thread.join()

    assert receiver.read(100) == b"late but fine"
    assert seen_idle == [True] and receiver.idle_since is None
    a.close()


def test_the_budget_refuses_the_partial_frame_that_does_not_fit_until_one_ends():
    budget = FrameBudget(3 * 64 * KIB, wait_s=0.2)  # room for three first chunks
    pairs = [socket.socketpair() for _ in range(5)]
    receivers = [_server_side(b, budget) for _, b in pairs]
    errors: list[TTransport.TTransportException] = []

    def receive(transport: FramedTransport) -> None:
        try:
            transport.readFrame()
        except TTransport.TTransportException as exc:
            errors.append(exc)

    threads = []
    for (a, _), receiver in zip(pairs[:3], receivers[:3], strict=True):
        a.sendall((100 * 1024 * 1024).to_bytes(4, "big") + b"partial")
        threads.append(threading.Thread(target=receive, args=(receiver,)))
        threads[-1].start()
    deadline = time.monotonic() + 5
    while budget.used_bytes < 3 * 64 * KIB and time.monotonic() < deadline:
        time.sleep(0.01)

    pairs[3][0].sendall((100 * 1024 * 1024).to_bytes(4, "big") + b"partial")
    with pytest.raises(TTransport.TTransportException) as refused:
        receivers[3].readFrame()
    assert refused.value.type == TTransport.TTransportException.SIZE_LIMIT
    assert "budget" in str(refused.value)

    for (a, _), thread in zip(pairs[:2], threads[:2], strict=True):
        a.close()  # two partial frames end with their connections...
        thread.join(timeout=5)
    assert [e.type for e in errors] == [TTransport.TTransportException.END_OF_FILE] * 2
    assert budget.used_bytes == 64 * KIB
    sender = threading.Thread(target=pairs[4][0].sendall, args=(_frame(b"y" * (100 * KIB)),))
    sender.start()  # ...so a new frame fits again
    assert receivers[4].readAll(100 * KIB) == b"y" * (100 * KIB)
    sender.join()

    for a, _ in pairs:
        a.close()
    threads[2].join(timeout=5)
    assert budget.used_bytes == 100 * KIB  # the last frame, until it is released
    receivers[4].release_read_frame()
    assert budget.used_bytes == 0


def test_a_big_reply_to_a_peer_that_stops_reading_fails_at_the_frame_deadline():
    a, b = socket.socketpair()
    sender = _server_side(b, frame_timeout_s=0.5, idle_timeout_s=30)
    sender.write(b"z" * (8 * 1024 * 1024))  # far more than the socket buffers hold

    began = time.monotonic()
    with pytest.raises(TTransport.TTransportException) as stuck:
        sender.flush()

    assert isinstance(stuck.value.inner, TimeoutError)
    assert time.monotonic() - began < 2.0  # the frame deadline, not the 30 s idle timeout
    assert b.gettimeout() == 30  # back to waiting for the next request
    a.close()
