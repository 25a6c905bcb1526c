"""Framed transport for Thrift, linear in the frame size, and a look into a frame's bytes.

Same wire format as thrift's TFramedTransport: a 4-byte big-endian length, then the
message. What differs is the cost: a frame is received straight into the buffer the
protocol reads from, sent without joining buffers, and a bulk binary can be handed out
as a read-only view of the frame instead of a copy.
"""

from __future__ import annotations

import ssl
import struct
import threading
import time
from io import BytesIO
from typing import Any

from thrift.Thrift import TType
from thrift.transport import TSocket, TTransport

# Bounds for every message: large enough for a 10M-parameter model (80 MB), small
# enough that a forged length cannot make a process allocate gigabytes.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# A binary value at least this long is "bulk": written by reference and read as a view.
BULK_BYTES = 64 * 1024
# How many values the look for a bulk binary may visit before it leaves a message to C.
PEEK_ITEMS = 64
_FRAME_HEADER = struct.Struct("!i")
SMALL_FRAME_BYTES = BULK_BYTES  # below this, one send of header + body beats two sends
# A large frame's buffer starts this big and doubles as its bytes arrive, so it never holds
# more than about twice what the peer has sent, whatever its header announced.
FIRST_CHUNK_BYTES = 64 * 1024
# How long a frame waits for room in an exhausted budget before its connection is closed.
BUDGET_WAIT_S = 1.0


def _as_timeout(exc: OSError) -> OSError:
    """A kernel send/receive timeout (EAGAIN on a blocking socket) as the TimeoutError it is."""
    if isinstance(exc, BlockingIOError):
        return TimeoutError(exc.errno, "timed out")
    return exc


def _failure(exc: OSError) -> str:
    """The message of a failed send or recv: a TLS alert (a refused certificate) says so."""
    if isinstance(exc, ssl.SSLEOFError):  # TLS 1.3: a refused client certificate, often
        return "TLS: the peer closed the connection mid-exchange (a certificate it refused?)"
    if isinstance(exc, ssl.SSLError):
        return "TLS: " + str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, ConnectionError):
        return f"connection lost: {exc.strerror or type(exc).__name__}"
    return "unexpected exception"


class FrameBudget:
    """Bytes that the frames being received may hold, shared by all connections of a server.

    A frame reserves its buffer as the buffer grows and gives it back once the frame was
    read, dropped or its connection closed. When the budget is spent, a frame that needs
    more waits a little (others may finish), then its connection is closed: a few peers
    sending big frames at once cannot make the server hold more than `limit_bytes`.
    """

    def __init__(self, limit_bytes: int, wait_s: float = BUDGET_WAIT_S) -> None:
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self._used = 0
        self._freed = threading.Condition(threading.Lock())

    @property
    def used_bytes(self) -> int:
        return self._used

    def reserve(self, n_bytes: int, wait_s: float = 0.0) -> bool:
        """Take `n_bytes`, waiting up to `wait_s` for them; False if they did not come free."""
        deadline = time.monotonic() + wait_s
        with self._freed:
            while self._used + n_bytes > self.limit_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._freed.wait(remaining)
            self._used += n_bytes
            return True

    def release(self, n_bytes: int) -> None:
        if n_bytes:
            with self._freed:
                self._used -= n_bytes
                self._freed.notify_all()


class FramedTransport(TTransport.TTransportBase, TTransport.CReadableTransport):
    """Thrift's framed transport over a TSocket, linear in the frame size.

    Why not TTransport.TFramedTransport: it reads a frame by `bytes +=` of recv() chunks
    and TSocket.write re-slices the unsent rest after every partial send, so an 80 MB
    model costs quadratic copying (about 20 MB/s measured). Here a frame is received
    straight into the buffer the protocol reads from, and sent from the write buffer
    without joining it to the header. Same wire format, same errors as TSocket's.

    A frame's buffer grows (doubling, from FIRST_CHUNK_BYTES) as its bytes arrive, never
    to the size its header announces up front: a peer that announces 250 MB and sends
    a byte a second makes this side commit kilobytes, not 250 MB.

    A server also passes `frame_timeout_s` (with `idle_timeout_s` and a shared `budget`):
    the socket then waits up to `idle_timeout_s` for the first byte of a frame and the
    rest of the frame must arrive within `frame_timeout_s` of it; `idle_since` says since
    when the connection has been waiting for a frame (None while one is arriving or being
    served). Those need a Python socket timeout (they work under TLS); a client keeps the
    kernel's SO_RCVTIMEO and pays no extra system call.
    """

    def __init__(
        self,
        sock: TSocket.TSocket,
        max_frame_size: int = MAX_MESSAGE_BYTES,
        *,
        budget: FrameBudget | None = None,
        frame_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        self._sock = sock
        self._max_frame_size = max_frame_size
        self._rbuf = BytesIO(b"")
        self._ahead = b""  # received past the end of the last frame
        self._wbuf = BytesIO()
        self._parts: list[bytes | memoryview] = []  # bulk buffers, by reference, in order
        self._budget = budget
        self._reserved = 0  # bytes of the budget the current frame's buffer holds
        self._frame_timeout_s = frame_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._deadline: float | None = None  # the frame being received must be whole by then
        self._timeout_set: float | None = None  # the socket timeout last set here
        self.idle_since: float | None = None
        self.n_frames = 0  # frames begun: a connection that never sent one is least missed

    def isOpen(self) -> bool:  # noqa: N802 - thrift's interface
        return self._sock.isOpen()

    def open(self) -> None:
        self._sock.open()

    def close(self) -> None:
        self._drop_frame()
        self._sock.close()

    def read(self, sz: int) -> bytes:
        data = self._rbuf.read(sz)
        if data:
            return data
        self.readFrame()
        return self._rbuf.read(sz)

    def readFrame(self) -> None:  # noqa: N802 - thrift's interface
        self._drop_frame()  # let the last frame go before the next one is allocated
        # One recv takes the header and, for a small frame, the whole body: every recv
        # releases and retakes the GIL, which costs more than the copy of a few KiB.
        head, self._ahead = self._ahead, b""
        if not head:
            head = self._recv_first()
        if self._frame_timeout_s is not None:
            self._deadline = time.monotonic() + self._frame_timeout_s
        try:
            while len(head) < 4:
                head += self._recv_some(SMALL_FRAME_BYTES)
            (size,) = _FRAME_HEADER.unpack_from(head)
            self.n_frames += 1
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
            self._rbuf = self._recv_frame(size, head[4:])
        finally:
            self._deadline = None
            if self._timeout_set != self._idle_timeout_s:  # a frame in many recvs: reset once
                self._set_timeout(self._idle_timeout_s)

    def _recv_first(self) -> bytes:
        """The first bytes of the next frame; on a server, an idle wait (evictable)."""
        if self._frame_timeout_s is None:
            return self._recv_some(SMALL_FRAME_BYTES)
        if self._timeout_set != self._idle_timeout_s:
            self._set_timeout(self._idle_timeout_s)
        self.idle_since = time.monotonic()
        try:
            return self._recv_some(SMALL_FRAME_BYTES)
        finally:
            self.idle_since = None

    def _set_timeout(self, timeout_s: float | None) -> None:
        if self._frame_timeout_s is None or self._sock.handle is None:
            return  # a client: the kernel's timeouts, set by its Connection
        self._sock.handle.settimeout(timeout_s)
        self._timeout_set = timeout_s

    def _arm_deadline(self) -> None:
        """Bound the next recv by what is left of the frame's deadline (None: no deadline)."""
        if self._deadline is None:
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TTransport.TTransportException(
                TTransport.TTransportException.TIMED_OUT,
                f"frame not received whole within {self._frame_timeout_s:g}s",
            )
        self._set_timeout(remaining)

    def _handle(self) -> Any:
        handle = self._sock.handle
        if handle is None:
            raise TTransport.TTransportException(
                TTransport.TTransportException.NOT_OPEN, "Transport not open"
            )
        return handle

    def _recv_some(self, limit: int) -> bytes:
        """At least one and at most `limit` bytes from the socket, in one recv."""
        handle = self._handle()
        self._arm_deadline()
        try:
            data = handle.recv(limit)
        except (TimeoutError, BlockingIOError) as exc:  # the latter: SO_RCVTIMEO
            raise self._timed_out(exc) from None
        except OSError as exc:
            raise TTransport.TTransportException(message=_failure(exc), inner=exc) from None
        if not data:
            raise TTransport.TTransportException(
                TTransport.TTransportException.END_OF_FILE, "TSocket read 0 bytes"
            )
        return data

    def _timed_out(self, exc: OSError) -> TTransport.TTransportException:
        message = "read timeout"
        if self._deadline is not None:
            message = f"frame not received whole within {self._frame_timeout_s:g}s"
        return TTransport.TTransportException(
            TTransport.TTransportException.TIMED_OUT, message, inner=_as_timeout(exc)
        )

    def _recv_frame(self, size: int, prefix: bytes) -> BytesIO:
        """A frame of `size` bytes (`prefix` already received), in a buffer that grows as
        the bytes arrive (so never much more than received), rewound."""
        frame = BytesIO()
        got = len(prefix)
        cap = min(size, max(FIRST_CHUNK_BYTES, 2 * got))
        try:
            self._grow(frame, cap)
            view = frame.getbuffer()
            try:
                view[:got] = prefix
                while got < size:
                    if got == cap:  # full: double it (realloc, mremap for big buffers)
                        view.release()
                        cap = min(size, 2 * cap)
                        self._grow(frame, cap)
                        view = frame.getbuffer()
                    got += self._recv_into(view, got, cap)
            finally:
                view.release()
        except BaseException:
            self._drop_frame()  # a half-received frame is garbage: its bytes are free again
            raise
        frame.seek(0)
        return frame

    def _grow(self, frame: BytesIO, cap: int) -> None:
        """Make `frame` `cap` bytes long, within the budget (closing the connection if not)."""
        if self._budget is not None:
            wait_s = self._budget.wait_s
            if self._deadline is not None:
                wait_s = min(wait_s, max(0.0, self._deadline - time.monotonic()))
            if not self._budget.reserve(cap - self._reserved, wait_s):
                raise TTransport.TTransportException(
                    TTransport.TTransportException.SIZE_LIMIT,
                    f"frames in flight hold the server's whole budget "
                    f"({self._budget.limit_bytes / 2**20:g} MiB)",
                )
            self._reserved = cap
        frame.seek(cap - 1)
        frame.write(b"\0")

    def _recv_into(self, view: memoryview, got: int, cap: int) -> int:
        """Receive into `view[got:cap]` in one recv; how many bytes came (at least one)."""
        handle = self._handle()
        self._arm_deadline()
        try:
            n = handle.recv_into(view[got:cap], cap - got)
        except (TimeoutError, BlockingIOError) as exc:  # the latter: SO_RCVTIMEO
            raise self._timed_out(exc) from None
        except OSError as exc:
            raise TTransport.TTransportException(message=_failure(exc), inner=exc) from None
        if n == 0:
            raise TTransport.TTransportException(
                TTransport.TTransportException.END_OF_FILE, "TSocket read 0 bytes"
            )
        return n

    def _drop_frame(self) -> None:
        """Let the received frame go and give its bytes back to the budget."""
        self._rbuf = BytesIO(b"")
        if self._reserved:
            assert self._budget is not None
            self._budget.release(self._reserved)
            self._reserved = 0

    def release_read_frame(self) -> None:
        """Drop the received frame once all of it was read (views of it keep their part alive).

        An idle connection would otherwise hold its last message, a whole model, until the
        next one arrives.
        """
        if self._rbuf.tell() >= len(self._rbuf.getbuffer()):
            self._drop_frame()

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
            BinaryPeek(view).walk_struct(start, spec)
            return False
        except BulkFound:
            return True
        except (PeekLimit, struct.error, IndexError, TypeError):
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
        size = sum(len(p) for p in parts) + len(view)
        # A server's big reply must leave within the frame timeout, as a request must arrive:
        # a peer that stops reading cannot hold a thread for the idle timeout. (Small ones
        # skip the two system calls: they fit the socket's buffer.)
        bounded = self._frame_timeout_s is not None and size >= SMALL_FRAME_BYTES
        try:
            header = _FRAME_HEADER.pack(size)
            if size < SMALL_FRAME_BYTES:
                handle.sendall(header + view)
            else:
                if bounded:
                    self._set_timeout(self._frame_timeout_s)
                handle.sendall(header)
                for part in parts:
                    handle.sendall(part)
                if len(view):
                    handle.sendall(view)
        except OSError as exc:
            raise TTransport.TTransportException(
                message=_failure(exc), inner=_as_timeout(exc)
            ) from None
        finally:
            view.release()
            if bounded:
                self._set_timeout(self._idle_timeout_s)

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


_SCALAR_SIZES = {
    TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8, TType.DOUBLE: 8,
}


class PeekLimit(Exception):
    """A look at a message went past PEEK_ITEMS values: decide without it."""


class BulkFound(Exception):  # noqa: N818 - a signal, not an error
    """The walk met a bulk binary."""


class BinaryPeek:
    """Walks encoded binary-protocol bytes by a struct's spec, looking for a bulk binary.

    Reads nothing, copies nothing; gives up (PeekLimit) after PEEK_ITEMS values, so a
    10,000-element list costs a bounded, small amount of work (and goes to the C decoder).
    """

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._budget = PEEK_ITEMS

    def walk_struct(self, pos: int, spec: Any) -> int:
        """Skip one encoded struct; the position after it. Raises BulkFound on a bulk binary."""
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
            raise PeekLimit
        buf = self._buf
        if ttype in _SCALAR_SIZES:
            return pos + _SCALAR_SIZES[ttype]
        if ttype == TType.STRING:
            (n,) = _I32.unpack_from(buf, pos)
            if args == "BINARY" and n >= BULK_BYTES:
                raise BulkFound
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
        raise PeekLimit  # unknown type: not ours to judge


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
