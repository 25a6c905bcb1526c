"""The binary protocol every process speaks: thrift's bytes, fast for small and bulky messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thrift.protocol import TBinaryProtocol, fastbinary
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TType

from idl.framing import BULK_BYTES, MAX_MESSAGE_BYTES, PEEK_ITEMS, FramedTransport, PeekLimit

MAX_CONTAINER_ITEMS = 16 * 1024 * 1024


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

    def _c_codec(self, method: Callable[..., Any]) -> Callable[..., Any] | None:
        """`method`, unless the next struct was marked for Python (a mark used once)."""
        if self._python_next:
            self._python_next = False
            return None
        return method

    # The generated read()/write() of every struct ask for these hooks first; None means
    # "code the fields in Python". The base constructor assigns None to both: ignored.
    _fast_encode = property(lambda self: self._c_codec(self._encode_struct),
                            lambda self, _value: None)
    _fast_decode = property(lambda self: self._c_codec(self._decode_struct),
                            lambda self, _value: None)

    def _encode_struct(self, obj: Any, spec: list) -> bytes:
        if not _binary_fields(spec[1]) or not _peek_finds_bulk(obj):
            try:
                return fastbinary.encode_binary(obj, spec)
            except TypeError:
                pass  # a binary held as a memoryview (forwarded bulk): C wants bytes
        self._python_next = True
        obj.write(self)  # writes straight to the transport
        return b""  # the generated caller writes this: nothing more

    def _decode_struct(self, obj: Any, iprot: Any, spec: list) -> None:
        try:
            if (
                isinstance(self.trans, FramedTransport)
                and _struct_can_hold_binary(spec[1])
                and self.trans.holds_bulk_binary(spec[1])
            ):
                self._python_next = True
                obj.read(self)
            else:
                fastbinary.decode_binary(obj, iprot, spec)
        except (TypeError, ValueError, OverflowError) as exc:
            # The C codec reports a malformed message (wrong type byte, bad size, bytes that
            # are not UTF-8) as plain Python errors: make it the protocol error it is.
            raise _malformed(exc) from None

    def skip(self, ttype: int, max_depth: int = 64) -> None:
        """Skip a value; a skipped string is read as bytes (need not be UTF-8)."""
        if ttype == TType.STRING:
            self.readBinary()
        else:
            super().skip(ttype, max_depth)

    def readMessageBegin(self) -> tuple[str, int, int]:  # noqa: N802 - thrift's interface
        try:
            return super().readMessageBegin()
        except UnicodeDecodeError as exc:  # the old-style header's name
            raise _malformed(exc) from None

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
        try:
            return self.trans.readAll(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed(exc) from None


def _malformed(exc: Exception) -> TProtocolException:
    """A malformed incoming message as thrift's INVALID_DATA, naming what was wrong."""
    return TProtocolException(TProtocolException.INVALID_DATA, f"malformed message: {exc}")


_can_hold_binary_cache: dict[int, bool] = {}


def _type_can_hold_binary(ttype: int, args: Any) -> bool:
    """Whether a value of this thrift type can contain a binary at any depth (types only)."""
    if ttype == TType.STRING:
        return args == "BINARY"
    if ttype == TType.STRUCT:
        return _struct_can_hold_binary(args[1])
    if ttype in (TType.LIST, TType.SET):
        return _type_can_hold_binary(args[0], args[1])
    if ttype == TType.MAP:
        return _type_can_hold_binary(args[0], args[1]) or _type_can_hold_binary(args[2], args[3])
    return False


def _struct_can_hold_binary(spec: Any) -> bool:
    """Whether a struct type (its thrift_spec) can contain a binary value at any depth."""
    key = id(spec)
    cached = _can_hold_binary_cache.get(key)
    if cached is None:
        _can_hold_binary_cache[key] = False  # recursive types: assume no while looking
        cached = any(f is not None and _type_can_hold_binary(f[1], f[3]) for f in spec or ())
        _can_hold_binary_cache[key] = cached
    return cached


def _peek_finds_bulk(obj: Any) -> bool:
    """Whether a struct holds a bulk binary, looking at no more than PEEK_ITEMS values.

    A message that carries a model carries it early and whole (every list of tensors is
    short); a long list of small items runs out of looks and is left to the C codec, which is
    right for it. A bulk binary missed this way is still coded correctly, only slower.
    """
    budget = [PEEK_ITEMS]
    try:
        return _struct_carries_bulk(obj, budget)
    except PeekLimit:
        return False


def _struct_carries_bulk(obj: Any, budget: list[int]) -> bool:
    """Whether a struct value holds a bulk binary; each value looked at spends the budget."""
    for name, ttype, args in _binary_fields(obj.thrift_spec):
        value = getattr(obj, name, None)
        if value is not None and _value_carries_bulk(value, ttype, args, budget):
            return True
    return False


_binary_fields_cache: dict[int, list[tuple[str, int, Any]]] = {}


def _binary_fields(spec: Any) -> list[tuple[str, int, Any]]:
    """(name, type, type args) of a struct's fields that can hold a binary value, cached."""
    fields = _binary_fields_cache.get(id(spec))
    if fields is None:
        fields = [(f[2], f[1], f[3]) for f in spec or ()
                  if f is not None and _type_can_hold_binary(f[1], f[3])]
        _binary_fields_cache[id(spec)] = fields
    return fields


def _value_carries_bulk(value: Any, ttype: int, args: Any, budget: list[int]) -> bool:
    """Whether one value of type `ttype` is or holds a bulk binary (PeekLimit past the budget)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise PeekLimit
    if ttype == TType.STRING:
        return len(value) >= BULK_BYTES
    if ttype == TType.STRUCT:
        return _struct_carries_bulk(value, budget)
    if ttype in (TType.LIST, TType.SET):
        return any(_value_carries_bulk(v, args[0], args[1], budget) for v in value if v is not None)
    return False  # maps: none in the IDL; the C codec codes them
