"""Thrift plumbing shared by every process: a bounded threaded server and pooled clients.

Why not thrift's own servers: TSimpleServer serves one caller at a time and its
accepted sockets never time out, so one idle connection blocks everyone. Here every
accepted socket gets an idle timeout, each connection has its own thread, frames
and strings are bounded on both sides, and a malformed message closes only its own
connection. The framing and the protocol live in idl/framing.py and idl/protocol.py.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thrift.Thrift import TException
from thrift.transport import TSocket, TTransport

from idl.events import log_event
from idl.framing import MAX_MESSAGE_BYTES, FramedTransport
from idl.protocol import protocol_factory

CONNECT_TIMEOUT_S = 5.0
DEFAULT_CALL_TIMEOUT_S = 30.0
# An accepted connection that sends nothing for this long is closed by the server;
# clients drop pooled connections well before that (POOL_IDLE_S).
SERVER_IDLE_TIMEOUT_S = 300.0
POOL_IDLE_S = 120.0
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
    """A thread-per-connection Thrift server whose accepted sockets time out when idle."""

    def __init__(
        self,
        processor: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout_s: float = SERVER_IDLE_TIMEOUT_S,
        max_connections: int = 256,
        name: str = "server",
    ) -> None:
        self._processor = processor
        self._idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._name = name
        self._stopping = threading.Event()
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._listener.settimeout(0.5)
        self.address = Address(host, self._listener.getsockname()[1])
        self._protocols = protocol_factory()

    def serve_forever(self) -> None:
        """Accept connections until `stop()`; each one is served on its own daemon thread."""
        log_event("listening", server=self._name, address=str(self.address))
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            if not self._slots.acquire(blocking=False):
                log_event("connection_refused", server=self._name, reason="too_many")
                conn.close()
                continue
            threading.Thread(
                target=self._serve_connection, args=(conn, peer), daemon=True
            ).start()
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

    def _serve_connection(self, conn: socket.socket, peer: tuple) -> None:
        try:
            conn.settimeout(self._idle_timeout_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = TSocket.TSocket()
            raw.setHandle(conn)
            transport = FramedTransport(raw, MAX_MESSAGE_BYTES)
            protocol = self._protocols.getProtocol(transport)
            while not self._stopping.is_set():
                self._processor.process(protocol, protocol)
        except (TException, OSError, EOFError) as exc:
            # Closed by the peer, idle too long, garbage or an oversized frame: only this
            # connection ends; the server keeps serving everyone else.
            if not _is_plain_close(exc):
                log_event("connection_closed", server=self._name, peer=peer[0], reason=exc)
        except Exception as exc:  # noqa: BLE001 - a bad message must never kill the server
            log_event("connection_error", server=self._name, peer=peer[0], reason=repr(exc))
        finally:
            conn.close()
            self._slots.release()


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


def _tls_reason(exc: BaseException) -> str:
    """The useful part of an ssl error: 'certificate verify failed: ...', 'alert ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
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
                if now - conn.last_used < POOL_IDLE_S:
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

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
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
