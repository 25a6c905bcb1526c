"""Thrift plumbing shared by every process: a bounded threaded server and pooled clients.

Why not thrift's own servers: TSimpleServer serves one caller at a time and its
accepted sockets never time out, so one idle connection blocks everyone. Here every
accepted socket gets an idle timeout, each connection has its own thread, frames
and strings are bounded on both sides, and a malformed message closes only its own
connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from thrift.protocol import TBinaryProtocol, fastbinary
from thrift.Thrift import TException, TType
from thrift.transport import TSocket, TTransport

from idl.events import log_event

# Bounds for every message: large enough for a 10M-parameter model (80 MB), small
# enough that a forged length cannot make a process allocate gigabytes.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_CONTAINER_ITEMS = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
DEFAULT_CALL_TIMEOUT_S = 30.0
# An accepted connection that sends nothing for this long is closed by the server;
# clients drop pooled connections well before that (POOL_IDLE_S).
SERVER_IDLE_TIMEOUT_S = 300.0
POOL_IDLE_S = 120.0


# A binary value at least this long is "bulk": written by reference and read as a view.
BULK_BYTES = 64 * 1024
# How many values the look for a bulk binary may visit before it leaves a message to C.
PEEK_ITEMS = 64
_FRAME_HEADER = struct.Struct("!i")
_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO / SO_SNDTIMEO
SMALL_FRAME_BYTES = BULK_BYTES  # below this, one send of header + body beats two sends


class ProtocolFactory:
    """Makes a BulkAwareProtocol per transport, with this module's size limits."""

    def getProtocol(self, trans: Any) -> BulkAwareProtocol:  # noqa: N802 - thrift's interface
        return BulkAwareProtocol(
            trans, string_length_limit=MAX_MESSAGE_BYTES, container_length_limit=MAX_CONTAINER_ITEMS
        )


def protocol_factory() -> ProtocolFactory:
    return ProtocolFactory()


class BulkAwareProtocol(TBinaryProtocol.TBinaryProtocol):
    """Thrift's binary protocol (same bytes on the wire), fast for both small and bulky messages.

    Why: thrift's C codec (fastbinary) is ~10x faster than pure Python on messages of many small
    fields (a 10,000-task RoundResult: 29 ms against 200 ms to encode), but it copies every
    binary value about three times: an 82 MB model took 0.27 s to encode against 0.05 s in
    Python, and decoding copies it twice more. So each struct is coded by C unless a short
    look (PEEK_ITEMS values) finds a bulk binary (>= BULK_BYTES) in it; then its fields are
    coded here in Python, where a bulk binary goes to the transport by reference and comes
    back from it as a read-only memoryview over the received frame (no copy at all;
    `bytes(view)` makes one where bytes are needed). Nested structs choose again, so a
    model's small tensors and ShardRefs still go through C.
    """

    def __init__(self, trans: Any, **limits: Any) -> None:
        self._python_next = False  # the next struct read/write skips the C codec once
        super().__init__(trans, **limits)

    # The generated read()/write() of every struct ask for these hooks first; None means
    # "code the fields in Python". The base constructor assigns None to both: ignored.
    @property
    def _fast_encode(self) -> Callable[..., bytes] | None:
        if self._python_next:
            self._python_next = False
            return None
        return self._encode_struct

    @_fast_encode.setter
    def _fast_encode(self, _value: object) -> None:
        pass

    @property
    def _fast_decode(self) -> Callable[..., None] | None:
        if self._python_next:
            self._python_next = False
            return None
        return self._decode_struct

    @_fast_decode.setter
    def _fast_decode(self, _value: object) -> None:
        pass

    def _encode_struct(self, obj: Any, spec: list) -> bytes:
        if not _binary_fields(spec[1]) or not _bulky_value(obj):
            try:
                return fastbinary.encode_binary(obj, spec)
            except TypeError:
                pass  # a binary held as a memoryview (forwarded bulk): C wants bytes
        self._python_next = True
        obj.write(self)  # writes straight to the transport
        return b""  # the generated caller writes this: nothing more

    def _decode_struct(self, obj: Any, iprot: Any, spec: list) -> None:
        if (
            isinstance(self.trans, FramedTransport)
            and _holds_binary(spec[1])
            and self.trans.holds_bulk_binary(spec[1])
        ):
            self._python_next = True
            obj.read(self)
        else:
            fastbinary.decode_binary(obj, iprot, spec)

    def readBinary(self) -> bytes | memoryview:  # noqa: N802 - thrift's interface
        size = self.readI32()
        self._check_string_length(size)
        if size >= BULK_BYTES and isinstance(self.trans, FramedTransport):
            return self.trans.read_view(size)
        return self.trans.readAll(size)

    def readMessageEnd(self) -> None:  # noqa: N802 - thrift's interface
        if isinstance(self.trans, FramedTransport):
            self.trans.release_read_frame()

    def readString(self) -> str:  # noqa: N802 - thrift's interface
        size = self.readI32()
        self._check_string_length(size)
        return self.trans.readAll(size).decode("utf-8")


_SCALAR_SIZES = {
    TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8, TType.DOUBLE: 8,
}
_holds_binary_cache: dict[int, bool] = {}


def _type_holds_binary(ttype: int, args: Any) -> bool:
    if ttype == TType.STRING:
        return args == "BINARY"
    if ttype == TType.STRUCT:
        return _holds_binary(args[1])
    if ttype in (TType.LIST, TType.SET):
        return _type_holds_binary(args[0], args[1])
    if ttype == TType.MAP:
        return _type_holds_binary(args[0], args[1]) or _type_holds_binary(args[2], args[3])
    return False


def _holds_binary(spec: Any) -> bool:
    """Whether a struct type (its thrift_spec) can contain a binary value at any depth."""
    key = id(spec)
    cached = _holds_binary_cache.get(key)
    if cached is None:
        _holds_binary_cache[key] = False  # recursive types: assume no while looking
        cached = any(f is not None and _type_holds_binary(f[1], f[3]) for f in spec or ())
        _holds_binary_cache[key] = cached
    return cached


def _bulky_value(obj: Any) -> bool:
    """Whether a struct holds a bulk binary, looking at no more than PEEK_ITEMS values.

    A message that carries a model carries it early and whole (every list of tensors is
    short); a long list of small items runs out of looks and is left to the C codec, which is
    right for it. A bulk binary missed this way is still coded correctly, only slower.
    """
    budget = [PEEK_ITEMS]
    try:
        return _struct_has_bulk(obj, budget)
    except _PeekLimit:
        return False


def _struct_has_bulk(obj: Any, budget: list[int]) -> bool:
    for name, ttype, args in _binary_fields(obj.thrift_spec):
        value = getattr(obj, name, None)
        if value is not None and _value_has_bulk(value, ttype, args, budget):
            return True
    return False


_binary_fields_cache: dict[int, list[tuple[str, int, Any]]] = {}


def _binary_fields(spec: Any) -> list[tuple[str, int, Any]]:
    """(name, type, type args) of a struct's fields that can hold a binary value, cached."""
    fields = _binary_fields_cache.get(id(spec))
    if fields is None:
        fields = [(f[2], f[1], f[3]) for f in spec or ()
                  if f is not None and _type_holds_binary(f[1], f[3])]
        _binary_fields_cache[id(spec)] = fields
    return fields


def _value_has_bulk(value: Any, ttype: int, args: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        raise _PeekLimit
    if ttype == TType.STRING:
        return len(value) >= BULK_BYTES
    if ttype == TType.STRUCT:
        return _struct_has_bulk(value, budget)
    if ttype in (TType.LIST, TType.SET):
        return any(_value_has_bulk(v, args[0], args[1], budget) for v in value if v is not None)
    return False  # maps: none in the IDL; the C codec codes them


def _as_timeout(exc: OSError) -> OSError:
    """A kernel send/receive timeout (EAGAIN on a blocking socket) as the TimeoutError it is."""
    if isinstance(exc, BlockingIOError):
        return TimeoutError(exc.errno, "timed out")
    return exc


class FramedTransport(TTransport.TTransportBase, TTransport.CReadableTransport):
    """Thrift's framed transport over a TSocket, linear in the frame size.

    Why not TTransport.TFramedTransport: it reads a frame by `bytes +=` of recv() chunks
    and TSocket.write re-slices the unsent rest after every partial send, so an 80 MB
    model costs quadratic copying (about 20 MB/s measured). Here a frame is received
    straight into the buffer the protocol reads from, and sent from the write buffer
    without joining it to the header. Same wire format, same errors as TSocket's.
    """

    def __init__(self, sock: TSocket.TSocket, max_frame_size: int = MAX_MESSAGE_BYTES) -> None:
        self._sock = sock
        self._max_frame_size = max_frame_size
        self._rbuf = BytesIO(b"")
        self._ahead = b""  # received past the end of the last frame
        self._wbuf = BytesIO()
        self._parts: list[bytes | memoryview] = []  # bulk buffers, by reference, in order

    def isOpen(self) -> bool:  # noqa: N802 - thrift's interface
        return self._sock.isOpen()

    def open(self) -> None:
        self._sock.open()

    def close(self) -> None:
        self._sock.close()

    def read(self, sz: int) -> bytes:
        data = self._rbuf.read(sz)
        if data:
            return data
        self.readFrame()
        return self._rbuf.read(sz)

    def readFrame(self) -> None:  # noqa: N802 - thrift's interface
        self._rbuf = BytesIO(b"")  # let the last frame go before the next one is allocated
        # One recv takes the header and, for a small frame, the whole body: every recv
        # releases and retakes the GIL, which costs more than the copy of a few KiB.
        head, self._ahead = self._ahead, b""
        while len(head) < 4:
            head += self._recv_some(SMALL_FRAME_BYTES)
        (size,) = _FRAME_HEADER.unpack_from(head)
        if size < 0:
            raise TTransport.TTransportException(
                TTransport.TTransportException.NEGATIVE_SIZE, f"negative frame size ({size})"
            )
        if size > self._max_frame_size:
            raise TTransport.TTransportException(
                TTransport.TTransportException.SIZE_LIMIT,
                f"frame size ({size}) larger than the maximum ({self._max_frame_size})",
            )
        if len(head) - 4 >= size:
            self._rbuf = BytesIO(head[4:4 + size])
            self._ahead = head[4 + size:]  # the start of a next frame (pipelined calls)
            return
        frame = BytesIO()
        self._recv_into(frame, size, head[4:])
        self._rbuf = frame

    def _recv_some(self, limit: int) -> bytes:
        """At least one and at most `limit` bytes from the socket, in one recv."""
        handle = self._sock.handle
        if handle is None:
            raise TTransport.TTransportException(
                TTransport.TTransportException.NOT_OPEN, "Transport not open"
            )
        try:
            data = handle.recv(limit)
        except (TimeoutError, BlockingIOError) as exc:  # the latter: SO_RCVTIMEO
            raise TTransport.TTransportException(
                TTransport.TTransportException.TIMED_OUT, "read timeout", inner=_as_timeout(exc)
            ) from None
        except OSError as exc:
            raise TTransport.TTransportException(
                message="unexpected exception", inner=exc
            ) from None
        if not data:
            raise TTransport.TTransportException(
                TTransport.TTransportException.END_OF_FILE, "TSocket read 0 bytes"
            )
        return data

    def _recv_into(self, target: BytesIO, size: int, prefix: bytes = b"") -> None:
        """Fill `target` with exactly `size` bytes (`prefix` already received, then the
        socket's), in place, then rewind it."""
        if size == 0:
            return
        handle = self._sock.handle
        if handle is None:
            raise TTransport.TTransportException(
                TTransport.TTransportException.NOT_OPEN, "Transport not open"
            )
        target.seek(size - 1)
        target.write(b"\0")  # one allocation of the final size, nothing copied
        view = target.getbuffer()
        try:
            got = len(prefix)
            view[:got] = prefix
            while got < size:
                try:
                    n = handle.recv_into(view[got:], size - got)
                except (TimeoutError, BlockingIOError) as exc:  # the latter: SO_RCVTIMEO
                    raise TTransport.TTransportException(
                        TTransport.TTransportException.TIMED_OUT, "read timeout",
                        inner=_as_timeout(exc),
                    ) from None
                except OSError as exc:
                    raise TTransport.TTransportException(
                        message="unexpected exception", inner=exc
                    ) from None
                if n == 0:
                    raise TTransport.TTransportException(
                        TTransport.TTransportException.END_OF_FILE, "TSocket read 0 bytes"
                    )
                got += n
        finally:
            view.release()
        target.seek(0)

    def release_read_frame(self) -> None:
        """Drop the received frame once all of it was read (views of it keep their part alive).

        An idle connection would otherwise hold its last message, a whole model, until the
        next one arrives.
        """
        if self._rbuf.tell() >= len(self._rbuf.getbuffer()):
            self._rbuf = BytesIO(b"")

    def read_view(self, size: int) -> memoryview:
        """The next `size` bytes as a read-only view of the received frame: no copy.

        The frame's buffer is never written again (the next frame gets a new one), so the
        view stays valid as long as anyone holds it.
        """
        start = self._rbuf.tell()
        if len(self._rbuf.getbuffer()) - start < size:
            return memoryview(self.readAll(size))  # spans frames: thrift never does this
        view = self._rbuf.getbuffer()[start:start + size].toreadonly()
        self._rbuf.seek(start + size)
        return view

    def holds_bulk_binary(self, spec: Any) -> bool:
        """Whether the struct about to be read holds a bulk binary (a bounded look, no read)."""
        view = self._rbuf.getbuffer()
        start = self._rbuf.tell()
        if len(view) - start < BULK_BYTES:
            view.release()
            return False  # too little left in the frame to hold one
        try:
            _BinaryPeek(view).walk_struct(start, spec)
            return False
        except _BulkFound:
            return True
        except (_PeekLimit, struct.error, IndexError, TypeError):
            return False  # long, unusual or malformed: the C decoder reads (and reports) it
        finally:
            view.release()

    def write(self, buf: bytes | memoryview) -> None:
        if len(buf) < BULK_BYTES:
            self._wbuf.write(buf)
            return
        # Bulk: keep a reference (bytes and received views are immutable) instead of copying.
        if self._wbuf.tell():
            self._parts.append(self._wbuf.getvalue())
            self._wbuf = BytesIO()
        self._parts.append(buf)

    def flush(self) -> None:
        parts, self._parts = self._parts, []  # a failed send leaves a clean buffer
        tail, self._wbuf = self._wbuf, BytesIO()
        handle = self._sock.handle
        if handle is None:
            raise TTransport.TTransportException(
                TTransport.TTransportException.NOT_OPEN, "Transport not open"
            )
        view = tail.getbuffer()
        try:
            size = sum(len(p) for p in parts) + len(view)
            header = _FRAME_HEADER.pack(size)
            if size < SMALL_FRAME_BYTES:
                handle.sendall(header + view)
            else:
                handle.sendall(header)
                for part in parts:
                    handle.sendall(part)
                if len(view):
                    handle.sendall(view)
        except OSError as exc:
            raise TTransport.TTransportException(
                message="unexpected exception", inner=_as_timeout(exc)
            ) from None
        finally:
            view.release()

    # CReadableTransport: what the accelerated protocol reads from directly.
    @property
    def cstringio_buf(self) -> BytesIO:
        return self._rbuf

    def cstringio_refill(self, partialread: bytes, reqlen: int) -> BytesIO:
        prefix = partialread
        while len(prefix) < reqlen:
            self.readFrame()
            prefix += self._rbuf.getvalue()
        self._rbuf = BytesIO(prefix)
        return self._rbuf


class _PeekLimit(Exception):
    """A look at a message went past PEEK_ITEMS values: decide without it."""


class _BulkFound(Exception):  # noqa: N818 - a signal, not an error
    """The walk met a bulk binary."""


class _BinaryPeek:
    """Walks encoded binary-protocol bytes by a struct's spec, looking for a bulk binary.

    Reads nothing, copies nothing; gives up (_PeekLimit) after PEEK_ITEMS values, so a
    10,000-element list costs a bounded, small amount of work (and goes to the C decoder).
    """

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._budget = PEEK_ITEMS

    def walk_struct(self, pos: int, spec: Any) -> int:
        """Skip one encoded struct; the position after it. Raises _BulkFound on a bulk binary."""
        buf = self._buf
        while True:
            ftype = buf[pos]
            if ftype == TType.STOP:
                return pos + 1
            (fid,) = _I16.unpack_from(buf, pos + 1)
            field = spec[fid] if spec is not None and 0 <= fid < len(spec) else None
            args = field[3] if field is not None and field[1] == ftype else None
            pos = self._walk_value(pos + 3, ftype, args)

    def _walk_value(self, pos: int, ttype: int, args: Any) -> int:
        self._budget -= 1
        if self._budget < 0:
            raise _PeekLimit
        buf = self._buf
        if ttype in _SCALAR_SIZES:
            return pos + _SCALAR_SIZES[ttype]
        if ttype == TType.STRING:
            (n,) = _I32.unpack_from(buf, pos)
            if args == "BINARY" and n >= BULK_BYTES:
                raise _BulkFound
            return pos + 4 + n
        if ttype == TType.STRUCT:
            return self.walk_struct(pos, args[1] if args is not None else None)
        if ttype in (TType.LIST, TType.SET):
            etype = buf[pos]
            (n,) = _I32.unpack_from(buf, pos + 1)
            pos += 5
            if etype in _SCALAR_SIZES:
                return pos + n * _SCALAR_SIZES[etype]
            eargs = args[1] if args is not None and args[0] == etype else None
            for _ in range(n):
                pos = self._walk_value(pos, etype, eargs)
            return pos
        if ttype == TType.MAP:
            ktype, vtype = buf[pos], buf[pos + 1]
            (n,) = _I32.unpack_from(buf, pos + 2)
            pos += 6
            for _ in range(n):
                pos = self._walk_value(pos, ktype, None)
                pos = self._walk_value(pos, vtype, None)
            return pos
        raise _PeekLimit  # unknown type: not ours to judge


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


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
    """One open framed connection and the generated client over it. Not thread-safe."""

    def __init__(self, client_cls: type, address: Address, timeout_s: float) -> None:
        self.address = address
        self._socket = TSocket.TSocket(address.host, address.port)
        self._socket.setTimeout(CONNECT_TIMEOUT_S * 1000)
        self._transport = FramedTransport(self._socket, MAX_MESSAGE_BYTES)
        self._transport.open()
        self._socket.handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.set_timeout(timeout_s)
        self.client = client_cls(protocol_factory().getProtocol(self._transport))
        self.last_used = time.monotonic()

    def set_timeout(self, timeout_s: float) -> None:
        """Bound every following read and write on this connection.

        The kernel enforces it (SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket): a Python
        socket timeout would poll() before every send and recv, and each poll is one more
        release of the GIL, which is what costs at thousands of calls a second.
        """
        handle = self._socket.handle
        if handle is None:
            self._socket.setTimeout(max(timeout_s, 0.001) * 1000)
            return
        timeout_s = max(timeout_s, 0.001)
        if handle.gettimeout() is not None:
            handle.settimeout(None)
        seconds = int(timeout_s)
        timeval = _TIMEVAL.pack(seconds, int((timeout_s - seconds) * 1_000_000))
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def close(self) -> None:
        self._transport.close()


def connect(client_cls: type, address: Address, timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
    """Open a connection; raises TTransportException when the peer cannot be reached."""
    return Connection(client_cls, address, timeout_s)


class ConnectionPool:
    """Reusable connections per address, each used by one thread at a time.

    A connection that saw any error is closed, never returned to the pool, so a
    half-read reply can never be mistaken for the next call's answer.
    """

    def __init__(self, client_cls: type, *, max_idle: int = 8) -> None:
        self._client_cls = client_cls
        self._max_idle = max_idle
        self._idle: dict[Address, list[Connection]] = {}
        self._lock = threading.Lock()

    def connection(self, address: Address, timeout_s: float) -> _Lease:
        """A pooled connection for one `with` block; an error inside closes it for good."""
        conn = self._take(address) or connect(self._client_cls, address, timeout_s)
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
