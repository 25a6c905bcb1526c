"""What a server's peers cannot do to it: commit memory they did not send, starve other
clients of connections, end its accept loop; and the TLS hook of the server side.

Real processes where the memory and descriptors are the point (a node's RSS, its file
limit); an in-process ThriftServer on loopback where the admission rules are.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require
from thrift.Thrift import TException

from harness import REPO, ServerProcess, start_coordinator, start_node
from idl.admission import ServerLimits
from idl.gen import ComputeNode, Coordinator
from idl.rpc import Address, ThriftServer, connect

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------


def _proc_status_kb(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM`-style line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _ping(address: Address, timeout_s: float = 2.0) -> float:
    """Seconds one ping on a fresh connection took (raises if it failed)."""
    began = time.monotonic()
    conn = connect(ComputeNode.Client, address, timeout_s=timeout_s)
    try:
        assert conn.client.ping()
    finally:
        conn.close()
    return time.monotonic() - began


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server ends this connection within `within_s` (what we sent is unread)."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _open(address: Address, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((address.host, address.port), timeout=5,
                                    source_address=(source, 0))


class _Pings:
    def ping(self) -> bool:
        return True


@pytest.fixture
def make_server() -> Iterator[Callable[..., ThriftServer]]:
    """Factory: an in-process ThriftServer (ping only) with the given limits, stopped after."""
    servers: list[ThriftServer] = []

    def make(**kwargs: object) -> ThriftServer:
        server = ThriftServer(ComputeNode.Processor(_Pings()), name="limits-test", **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw client sockets a test opens; all closed after it."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Real server processes a test starts; stopped by PID after it, also on failure."""
    started: list[ServerProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop()


# --- memory: a peer cannot make a server commit what it did not send ----------------------


def test_trickled_near_max_frames_leave_the_node_small_and_serving(tmp_path, processes, sockets):
    # Prepare: a real node; 24 peers each announce a frame just under the 256 MiB maximum.
    # Sized from the prefix, as before, that was 6 GiB committed.
    node = start_node(tmp_path, 0.0, "--frame-timeout-s", "4")
    processes.append(node)
    rss_before_kb = _proc_status_kb(node.pid, "VmRSS")
    announced = 256 * MIB - 16
    for _ in range(24):
        sock = _open(node.address)
        sock.sendall(announced.to_bytes(4, "big") + b"\x80" * 4096)
        sockets.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # a byte per peer every 0.2 s: every recv returns, none idles out
        while not stop.wait(0.2):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"\x80")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        # Execute: the node keeps answering while the frames trickle in.
        ping_s = [_ping(node.address) for _ in range(10) if not stop.wait(0.2)]
        # Assert: each trickled frame loses its connection at the 4 s frame deadline.
        assert all(_closed_by_server(sock, within_s=6.0) for sock in sockets)
    finally:
        stop.set()
        trickler.join()
    peak_kb = _proc_status_kb(node.pid, "VmHWM")
    print(f"\nnode RSS before {rss_before_kb / 1024:.1f} MiB, peak {peak_kb / 1024:.1f} MiB "
          f"under 24 trickled {announced / MIB:.0f} MiB frames")
    assert max(ping_s) < 1.0
    assert peak_kb - rss_before_kb < 64 * 1024  # 24 x 64 KiB first chunks, not 24 x 256 MiB
    assert "frame not received whole within 4s" in node.log()
    _ping(node.address)


# --- connections: idle ones give way, busy ones are refused, per peer too -------------------


def test_idle_flood_gives_way_to_ping_status_and_heartbeats(tmp_path, processes, sockets):
    # Prepare: a node and a coordinator heartbeating it every 0.2 s, each server holding at
    # most 16 connections; all on 127.0.0.1, so the per-peer cap cannot tell them apart.
    node = start_node(tmp_path, 0.0, "--max-connections", "16")
    processes.append(node)
    coord = start_coordinator(tmp_path, "round-robin", [node.address], "--heartbeat-s", "0.2",
                              "--max-connections", "16")
    processes.append(coord)
    status = connect(Coordinator.Client, coord.address, timeout_s=5.0)
    assert _wait_for(lambda: status.client.status("").nodes[0].last_seen_s_ago >= 0)
    status.close()
    stop = threading.Event()

    def flood() -> None:  # silent connections, opened faster than the heartbeats come
        while not stop.wait(0.01):
            for server in (node, coord):
                with contextlib.suppress(OSError):
                    sockets.append(_open(server.address))

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        # Execute: 1.5 s of flood (~300 connections), heartbeats, pings and a status command.
        assert _wait_for(lambda: len(sockets) > 300, timeout_s=15)
        ping_s = [_ping(node.address) for _ in range(5)]
        shown = subprocess.run(
            [sys.executable, "-m", "client", "status", str(coord.address)],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )
    finally:
        stop.set()
        flooder.join()

    # Assert: everyone legitimate got through and the node never looked dead.
    assert max(ping_s) < 1.0
    assert shown.returncode == 0, shown.stderr
    assert "nodes 1/1 alive" in shown.stdout
    conn = connect(Coordinator.Client, coord.address, timeout_s=5.0)
    try:
        seen = conn.client.status("").nodes[0]
    finally:
        conn.close()
    assert seen.alive and seen.failures == 0
    assert "event=node_dead" not in coord.log()
    assert "event=connection_evicted" in node.log()
    assert "event=connection_evicted" in coord.log()


def _busy(sock: socket.socket) -> socket.socket:
    """Make a connection busy: the first bytes of a frame, the rest never sent."""
    sock.sendall((1000).to_bytes(4, "big") + b"\x80\x01")
    return sock


def test_when_every_connection_is_busy_a_new_one_is_refused(make_server, sockets):
    server = make_server(max_connections=4, frame_timeout_s=5.0)
    sockets += [_busy(_open(server.address)) for _ in range(4)]
    assert _wait_for(lambda: server.n_connections == 4 and server.n_idle_connections == 0)

    late = _open(server.address)
    sockets.append(late)
    refused = _closed_by_server(late, within_s=2.0)
    sockets[0].close()  # one busy peer leaves: room again
    assert _wait_for(lambda: server.n_connections == 3)

    assert refused
    assert _ping(server.address) < 1.0


def test_a_new_connection_evicts_the_longest_idle_never_used_one_first(make_server, sockets):
    server = make_server(max_connections=4)
    used = connect(ComputeNode.Client, server.address, timeout_s=2.0)  # pooled, proven
    assert used.client.ping()
    silent = []
    for n in range(3):  # one at a time, so their ages are in the order they were opened
        silent.append(_open(server.address))
        sockets.append(silent[-1])
        assert _wait_for(lambda n=n: server.n_idle_connections == 2 + n)

    sockets.append(_open(server.address))  # full: one idle connection must give way

    assert _closed_by_server(silent[0], within_s=2.0)  # the oldest silent one...
    assert not _closed_by_server(silent[1], within_s=0.2)
    assert used.client.ping()  # ...not the used one, though it has been idle longest
    used.close()


def test_a_peer_at_its_cap_gives_way_only_with_its_own_connections(make_server, sockets):
    # Prepare: 127.0.0.2 may hold 3 connections; 127.0.0.1 holds a used one.
    server = make_server(max_connections=100, max_connections_per_peer=3, frame_timeout_s=5.0)
    other = connect(ComputeNode.Client, server.address, timeout_s=2.0)
    assert other.client.ping()
    mine = []
    for n in range(3):  # one at a time, so their ages are in the order they were opened
        mine.append(_open(server.address, source="127.0.0.2"))
        sockets.append(mine[-1])
        assert _wait_for(lambda n=n: server.n_idle_connections == 2 + n)

    # Execute / Assert: a 4th from 127.0.0.2 evicts 127.0.0.2's oldest, nobody else's.
    sockets.append(_busy(_open(server.address, source="127.0.0.2")))
    assert _closed_by_server(mine[0], within_s=2.0)
    assert other.client.ping()
    # With all of 127.0.0.2's connections busy, its next one is refused; 127.0.0.1's is not.
    for sock in mine[1:]:
        _busy(sock)
    assert _wait_for(lambda: server.n_idle_connections == 1)
    refused = _open(server.address, source="127.0.0.2")
    sockets.append(refused)
    assert _closed_by_server(refused, within_s=2.0)
    assert _ping(server.address) < 1.0
    other.close()


# --- accept(): running out of descriptors is survived ---------------------------------------


def test_running_out_of_descriptors_does_not_end_the_accept_loop(tmp_path, processes, sockets):
    # Prepare: a real node allowed only 12 descriptors more than it has open.
    node = start_node(tmp_path, 0.0)
    processes.append(node)
    n_open = len(list(Path(f"/proc/{node.pid}/fd").iterdir()))
    resource.prlimit(node.pid, resource.RLIMIT_NOFILE, (n_open + 12, n_open + 12))

    # Execute: 40 connections; the kernel queues them, the node's accept() hits EMFILE.
    sockets += [_open(node.address) for _ in range(40)]
    assert _wait_for(lambda: "event=accept_failed" in node.log())
    with pytest.raises(TException):
        _ping(node.address, timeout_s=0.5)  # queued behind the others, never accepted yet
    for sock in sockets:
        sock.close()

    # Assert: with the descriptors back, the same process accepts and answers again.
    assert _wait_for(lambda: _answers(node.address), timeout_s=10)
    assert node.popen.poll() is None
    assert "EMFILE" in node.log() or "Too many open files" in node.log()


def _answers(address: Address) -> bool:
    try:
        _ping(address, timeout_s=1.0)
        return True
    except Exception:  # noqa: BLE001 - any failure: not yet
        return False


# --- TLS: each connection's handshake on its own thread, bounded ----------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed 127.0.0.1 certificate and a client trusting it."""
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    try:
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True, timeout=30,
        ).returncode == 0
    except FileNotFoundError:
        made = False
    require(made, "openssl makes the test certificate")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


def test_tls_handshakes_fail_or_stall_alone(make_server, sockets, tls_pair):
    server_ctx, client_ctx = tls_pair
    server = make_server(tls=server_ctx, frame_timeout_s=1.0)
    plain = _open(server.address)  # speaks no TLS: its handshake fails
    plain.sendall((5).to_bytes(4, "big") + b"hello")
    stalled = _open(server.address)  # starts a handshake, then says nothing more
    stalled.sendall(b"\x16\x03\x01")
    sockets += [plain, stalled]

    began = time.monotonic()
    conn = connect(ComputeNode.Client, server.address, timeout_s=2.0, tls=client_ctx)
    assert conn.client.ping()  # served meanwhile
    conn.close()
    assert _closed_by_server(plain, within_s=2.0)
    assert _closed_by_server(stalled, within_s=3.0)  # cut at the 1 s frame timeout

    assert time.monotonic() - began < 3.0
    assert _wait_for(lambda: server.n_connections == 0, timeout_s=2.0)  # threads all ended


def test_a_silent_tls_connection_is_idle_and_gives_way(make_server, sockets, tls_pair):
    server_ctx, client_ctx = tls_pair
    server = make_server(tls=server_ctx, max_connections=2)
    for n in range(2):  # one at a time, so sockets[0] is the oldest
        sockets.append(_open(server.address))
        assert _wait_for(lambda n=n: server.n_idle_connections == n + 1)

    conn = connect(ComputeNode.Client, server.address, timeout_s=2.0, tls=client_ctx)

    assert conn.client.ping()
    assert _closed_by_server(sockets[0], within_s=2.0)
    conn.close()


# --- the limits on the command line ---------------------------------------------------------


@pytest.mark.parametrize("module", ["compute_node", "coordinator"])
def test_both_servers_take_every_limit_on_the_command_line(module):
    cli = __import__(f"{module}.__main__", fromlist=["cli"]).cli
    runner = CliRunner()
    shown = runner.invoke(cli, ["--help"]).output
    for option in ("--max-connections", "--max-connections-per-peer", "--max-frame-mb",
                   "--in-flight-mb", "--idle-timeout-s", "--frame-timeout-s"):
        assert option in shown
    args = ["0", "0.5" if module == "compute_node" else "1"]

    nan = runner.invoke(cli, [*args, "--frame-timeout-s", "nan"])
    small = runner.invoke(cli, [*args, "--max-frame-mb", "64", "--in-flight-mb", "32"])

    assert nan.exit_code == 2 and "finite" in nan.output
    assert small.exit_code == 2 and "could never be received" in small.output


def test_limits_must_be_positive():
    assert ServerLimits().kwargs()["max_connections"] > 0
    for field in ("max_connections", "in_flight_bytes", "frame_timeout_s"):
        with pytest.raises(ValueError, match=field):
            ServerLimits(**{field: 0})
    with pytest.raises(ValueError):
        ServerLimits(idle_timeout_s=float("nan"))
    with pytest.raises(ValueError, match="could never arrive"):
        ServerLimits(max_frame_bytes=2 * MIB, in_flight_bytes=MIB)
