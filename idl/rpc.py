"""Thrift plumbing shared by every process: a bounded threaded server and pooled clients.

Why not thrift's own servers: TSimpleServer serves one caller at a time and its
accepted sockets never time out, so one idle connection blocks everyone. Here each
connection has its own thread, idle ones give way to newcomers and time out, frames
and strings are bounded on both sides (a frame also in time and, server-wide, in the
bytes held while frames arrive), and a malformed message closes only its own
connection. The framing and the protocol live in idl/framing.py and idl/protocol.py.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from thrift.Thrift import TException
from thrift.transport import TSocket, TTransport

from idl.admission import (
    FRAME_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    IN_FLIGHT_BYTES,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    ConnectionTable,
    ServerLimits,
    Slot,
)
from idl.framing import MAX_MESSAGE_BYTES, FrameBudget, FramedTransport
from idl.protocol import protocol_factory
from runtime.events import log_event

CONNECT_TIMEOUT_S = 5.0
DEFAULT_CALL_TIMEOUT_S = 30.0
# Clients drop pooled connections well before a server closes them as idle
# (idl.admission.IDLE_TIMEOUT_S).
POOL_IDLE_S = 120.0
# accept() failing (out of descriptors): first and longest wait before trying again.
ACCEPT_BACKOFF_MIN_S = 0.01
ACCEPT_BACKOFF_MAX_S = 1.0
_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO / SO_SNDTIMEO


@dataclass(frozen=True)
class Address:
    """A host:port endpoint."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse "host:port" or "host,port"; ValueError with a readable message otherwise."""
        text = text.strip()
        sep = "," if "," in text else ":"
        host, _, port_text = text.rpartition(sep)
        host = host.strip()
        if not host or not port_text.strip().isdigit():
            raise ValueError(f"expected host:port, got {text!r}")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        return cls(host, port)


class ThriftServer:
    """A thread-per-connection Thrift server that bounds what its peers can hold.

    Connections in all and per peer address (the longest-idle one gives way to a
    newcomer, see idl/admission.py); bytes of frames in flight, shared by all connections
    (a FrameBudget); a frame's size and the time it may take to arrive; how long a
    connection may sit idle. An accept() error (EMFILE...) is logged and retried with
    backoff, never the end of serve_forever. With `tls`, each connection does its
    handshake on its own thread, bounded by the frame timeout.
    """

    def __init__(
        self,
        processor: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "server",
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
        max_frame_bytes: int = MAX_MESSAGE_BYTES,
        in_flight_bytes: int = IN_FLIGHT_BYTES,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
    ) -> None:
        self.limits = ServerLimits(
            max_connections, max_connections_per_peer, max_frame_bytes, in_flight_bytes,
            idle_timeout_s, frame_timeout_s,
        )
        self._processor = processor
        self._tls = tls  # wraps every accepted connection (see idl/tls.py)
        self._table = ConnectionTable(max_connections, max_connections_per_peer)
        self._budget = FrameBudget(in_flight_bytes)
        self._name = name
        self._stopping = threading.Event()
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._listener.settimeout(0.5)
        self.address = Address(host, self._listener.getsockname()[1])
        self._protocols = protocol_factory()

    @property
    def n_connections(self) -> int:
        return len(self._table)

    @property
    def n_idle_connections(self) -> int:
        return self._table.n_idle()

    def serve_forever(self) -> None:
        """Accept connections until `stop()`; each one is served on its own daemon thread."""
        log_event("listening", server=self._name, address=str(self.address))
        backoff_s = 0.0
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                # Out of descriptors or buffers: the pending connection stays queued, so
                # retrying at once would spin. Wait, longer each time, and go on serving.
                backoff_s = min(max(2 * backoff_s, ACCEPT_BACKOFF_MIN_S), ACCEPT_BACKOFF_MAX_S)
                log_event(
                    "accept_failed", level=logging.WARNING, server=self._name,
                    reason=exc.strerror or repr(exc), retry_in_s=backoff_s,
                )
                self._stopping.wait(backoff_s)
                continue
            backoff_s = 0.0
            self._admit(conn, peer[0])
        self._listener.close()

    def start(self) -> threading.Thread:
        """Serve on a background daemon thread (for tests and embedded use)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True, name=self._name)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting; safe from a signal handler (closing the listener ends accept())."""
        self._stopping.set()
        self._listener.close()

    def _admit(self, conn: socket.socket, peer: str) -> None:
        """Serve `conn` on a thread of its own, or refuse it; an idle one may give way."""
        slot = Slot(peer, conn)
        admission = self._table.admit(slot)
        if admission.refused:
            log_event("connection_refused", server=self._name, peer=peer,
                      reason=admission.refused)
            conn.close()
            return
        if admission.evict is not None:
            victim = admission.evict
            since = victim.idle_since()
            log_event("connection_evicted", server=self._name, peer=victim.peer,
                      idle_s=time.monotonic() - since if since is not None else 0.0,
                      for_peer=peer)
            victim.shut()
        try:
            threading.Thread(target=self._serve_connection, args=(slot,), daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: only this connection fails
            log_event("connection_refused", server=self._name, peer=peer, reason=str(exc))
            self._table.remove(slot)
            conn.close()

    def _serve_connection(self, slot: Slot) -> None:
        conn = slot.sock
        transport = None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self.limits.idle_timeout_s)  # a Python timeout: TLS needs one
            if self._tls is not None:
                tls_conn = self._handshake(slot)
                if tls_conn is None:
                    return
                conn = tls_conn
            raw = TSocket.TSocket()
            raw.setHandle(conn)
            transport = FramedTransport(
                raw, self.limits.max_frame_bytes, budget=self._budget,
                frame_timeout_s=self.limits.frame_timeout_s,
                idle_timeout_s=self.limits.idle_timeout_s,
            )
            slot.transport = transport
            protocol = self._protocols.getProtocol(transport)
            while not self._stopping.is_set():
                self._processor.process(protocol, protocol)
        except (TException, OSError, EOFError) as exc:
            # Closed by the peer, idle too long, garbage, an oversized or too slow frame,
            # evicted: only this connection ends; the server keeps serving everyone else.
            if not _is_plain_close(exc) and not slot.evicted:
                log_event("connection_closed", server=self._name, peer=slot.peer, reason=exc)
        except Exception as exc:  # noqa: BLE001 - a bad message must never kill the server
            log_event("connection_error", server=self._name, peer=slot.peer, reason=repr(exc))
        finally:
            if transport is not None:
                transport.close()  # also gives its frame's bytes back to the budget
            slot.sock.close()
            self._table.remove(slot)

    def _handshake(self, slot: Slot) -> ssl.SSLSocket | None:
        """The TLS-wrapped socket, or None (the connection ends) when the handshake fails.

        Until the client's first byte arrives the connection is idle (it may give way to
        a newcomer); from then on the whole handshake must end within the frame timeout.
        """
        assert self._tls is not None
        conn = slot.sock
        slot.waiting_since = time.monotonic()
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        ready = poller.poll(self.limits.idle_timeout_s * 1000)
        slot.waiting_since = None
        if not ready or slot.evicted:
            return None
        conn.settimeout(self.limits.frame_timeout_s)  # the whole handshake, not each read
        try:
            wrapped = self._tls.wrap_socket(conn, server_side=True)
        except (OSError, ValueError) as exc:
            log_event("tls_handshake_failed", level=logging.WARNING, server=self._name,
                      peer=slot.peer, reason=exc)
            return None
        slot.sock = wrapped
        wrapped.settimeout(self.limits.idle_timeout_s)
        return wrapped


def _is_plain_close(exc: BaseException) -> bool:
    return isinstance(exc, TTransport.TTransportException) and exc.type in (
        TTransport.TTransportException.END_OF_FILE,
        TTransport.TTransportException.NOT_OPEN,
    )


class Connection:
    """One open framed connection and the generated client over it. Not thread-safe.

    With `tls`, the socket is wrapped after the TCP connect and before the framing, the
    handshake bounded by CONNECT_TIMEOUT_S and the server checked for `address.host`.
    """

    def __init__(
        self, client_cls: type, address: Address, timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self._socket = TSocket.TSocket(address.host, address.port)
        self._socket.setTimeout(CONNECT_TIMEOUT_S * 1000)
        self._transport = FramedTransport(self._socket, MAX_MESSAGE_BYTES)
        self._transport.open()
        self._tls = tls is not None
        if tls is not None:
            self._wrap(tls)
        self._socket.handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.set_timeout(timeout_s)
        self.client = client_cls(protocol_factory().getProtocol(self._transport))
        self.last_used = time.monotonic()

    def _wrap(self, tls: ssl.SSLContext) -> None:
        """TLS handshake on the open socket; a refusal is a transport error like any other."""
        try:
            self._socket.setHandle(
                tls.wrap_socket(self._socket.handle, server_hostname=self.address.host)
            )
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._transport.close()
            raise TTransport.TTransportException(
                TTransport.TTransportException.NOT_OPEN,
                f"TLS handshake with {self.address} failed: {_tls_reason(exc)}", inner=exc,
            ) from None

    def set_timeout(self, timeout_s: float) -> None:
        """Bound every following read and write on this connection.

        The kernel enforces it (SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket): a Python
        socket timeout would poll() before every send and recv, and each poll is one more
        release of the GIL, which is what costs at thousands of calls a second. Not under
        TLS: an SSLSocket on a blocking socket retries past the kernel's timeout (measured:
        a 0.3 s SO_RCVTIMEO read waited until the peer closed), so there it is the socket's
        own timeout.
        """
        handle = self._socket.handle
        timeout_s = max(timeout_s, 0.001)
        if handle is None or self._tls:
            self._socket.setTimeout(timeout_s * 1000)
            return
        if handle.gettimeout() is not None:
            handle.settimeout(None)
        seconds = int(timeout_s)
        timeval = _TIMEVAL.pack(seconds, int((timeout_s - seconds) * 1_000_000))
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def close(self) -> None:
        self._transport.close()

    def closed_by_peer(self) -> bool:
        """Whether the peer closed this idle connection (or wrote to it unasked).

        A full server lets its longest-idle connection go, and that may be one resting in
        a pool: reusing it would fail the next call for nothing. One poll, no wait.
        """
        handle = self._socket.handle
        if handle is None:
            return True
        poller = select.poll()
        poller.register(handle, select.POLLIN)
        return bool(poller.poll(0))


def _tls_reason(exc: BaseException) -> str:
    """The useful part of an ssl error: 'certificate verify failed: ...', 'alert ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message.rstrip('.')}"
    if isinstance(exc, ssl.SSLEOFError):
        return "the server closed the connection (does it serve TLS?)"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, ConnectionError):
        return f"connection closed by the server ({exc.strerror or type(exc).__name__})"
    return str(exc) or type(exc).__name__


def connect(
    client_cls: type, address: Address, timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Open a connection; raises TTransportException when the peer cannot be reached."""
    return Connection(client_cls, address, timeout_s, tls)


class ConnectionPool:
    """Reusable connections per address, each used by one thread at a time.

    A connection that saw any error is closed, never returned to the pool, so a
    half-read reply can never be mistaken for the next call's answer.
    """

    def __init__(
        self, client_cls: type, *, max_idle: int = 8, tls: ssl.SSLContext | None = None
    ) -> None:
        self._client_cls = client_cls
        self._max_idle = max_idle
        self._tls = tls
        self._idle: dict[Address, list[Connection]] = {}
        self._lock = threading.Lock()

    def connection(self, address: Address, timeout_s: float) -> _Lease:
        """A pooled connection for one `with` block; an error inside closes it for good."""
        conn = self._take(address) or connect(self._client_cls, address, timeout_s, self._tls)
        conn.set_timeout(timeout_s)
        return _Lease(self, conn)

    def call(self, address: Address, timeout_s: float, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(client)` on a pooled connection to `address`."""
        with self.connection(address, timeout_s) as conn:
            return fn(conn.client)

    def discard(self, address: Address) -> None:
        """Close every idle connection to `address` (after the peer was seen to fail)."""
        with self._lock:
            conns = self._idle.pop(address, [])
        for conn in conns:
            conn.close()

    def close(self) -> None:
        with self._lock:
            everything = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in everything:
            conn.close()

    def _take(self, address: Address) -> Connection | None:
        now = time.monotonic()
        with self._lock:
            conns = self._idle.get(address, [])
            while conns:
                conn = conns.pop()
                if now - conn.last_used < POOL_IDLE_S and not conn.closed_by_peer():
                    return conn
                conn.close()
        return None

    def _give_back(self, conn: Connection) -> None:
        conn.last_used = time.monotonic()
        with self._lock:
            conns = self._idle.setdefault(conn.address, [])
            if len(conns) < self._max_idle:
                conns.append(conn)
                return
        conn.close()


class _Lease:
    """Context manager for one use of a pooled connection.

    A class, not @contextmanager: generated Thrift exceptions are immutable, and a
    generator-based manager fails re-raising them (it sets __traceback__).
    """

    def __init__(self, pool: ConnectionPool, conn: Connection) -> None:
        self._pool = pool
        self._conn = conn

    def __enter__(self) -> Connection:
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is None:
            self._pool._give_back(self._conn)
        else:
            self._conn.close()
        return False


def wait_until_ready(
    ping: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.02
) -> None:
    """Call `ping` until it succeeds or `timeout_s` passes (then re-raise its last error)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ping()
            return
        except (TException, OSError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(interval_s)
