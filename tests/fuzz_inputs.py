"""Seeded fuzz inputs for the Thrift services: valid calls built from idl.gen, then mutated.

The valid calls come from the generated code at run time (every `*_args` class of a
service module and its thrift_spec), so a method or argument added to idl/cluster.thrift is
fuzzed without a change here. Each call is serialised by thrift's pure-Python
TBinaryProtocol, which records where every length, type byte and field header lies, so the
mutators can forge exactly those bytes. Everything is drawn from one `random.Random`: the
same seed gives the same inputs, byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer

FRAME = struct.Struct("!i")
I32 = struct.Struct("!i")
VERSION_1 = -2147418112  # 0x80010000 as a signed i32: strict binary message header
INTERESTING_I32 = [0, 1, -1, 2, 7, 8, 63, 64, 255, 4096, 65535, 65536, 1 << 20, 1 << 24,
                   (1 << 28) - 1, 1 << 28, 2**31 - 1, -(2**31), -2, 0x7FFFFFF0]
INTERESTING_I64 = [0, 1, -1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]
INTERESTING_DOUBLE = [0.0, -0.0, 1.0, -1.0, 1e-4, 0.5, 3.0, 1e300, -1e300, 5e-324,
                      float("nan"), float("inf"), float("-inf")]
# Every wire type, the valid ones and some that do not exist.
TYPE_BYTES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0x7F, 0xFF]
MESSAGE_TYPES = [0, TMessageType.REPLY, TMessageType.EXCEPTION, TMessageType.ONEWAY, 5, 0x7F]
# Shapes whose int64 size product wraps around, is 0 yet too big, or has too many axes.
HOSTILE_TENSORS = [
    ((2**32, 2**32), b""), ((2**62, 4), b""), ((0, 2**63 - 1), b""), ((1,) * 65, bytes(8)),
    ((-1, -8), bytes(64)), ((2**63 - 1,), bytes(8)), ((), bytes(8)), ((3,), bytes(23)),
]
CSV_ROW = "3,13,4,9,3,7,7,11,6,7,7,6,7,8,15,7,1\n"


def service_calls(module: ModuleType) -> dict[str, type]:
    """Method name -> its generated `*_args` class, for every method of a service module."""
    return {
        name.removesuffix("_args"): cls
        for name, cls in sorted(vars(module).items())
        if name.endswith("_args") and isinstance(cls, type) and hasattr(cls, "thrift_spec")
    }


class RecordingProtocol(TBinaryProtocol):
    """TBinaryProtocol (strict) that notes the offset of every forgeable byte it writes."""

    def __init__(self, trans: TMemoryBuffer) -> None:
        super().__init__(trans, strictRead=False, strictWrite=True)
        self.lengths: list[int] = []  # offsets of i32 sizes (strings, binaries, containers)
        self.types: list[int] = []  # offsets of type bytes (fields, container elements)

    def _at(self) -> int:
        return self.trans._buffer.tell()

    def writeFieldBegin(self, name: str, ttype: int, fid: int) -> None:  # noqa: N802
        self.types.append(self._at())
        super().writeFieldBegin(name, ttype, fid)

    def writeString(self, value: str) -> None:  # noqa: N802
        self.lengths.append(self._at())
        super().writeString(value)

    def writeBinary(self, value: bytes) -> None:  # noqa: N802
        self.lengths.append(self._at())
        super().writeBinary(value)

    def writeListBegin(self, etype: int, size: int) -> None:  # noqa: N802
        at = self._at()
        self.types.append(at)
        self.lengths.append(at + 1)
        super().writeListBegin(etype, size)

    def writeSetBegin(self, etype: int, size: int) -> None:  # noqa: N802
        self.writeListBegin(etype, size)

    def writeMapBegin(self, ktype: int, vtype: int, size: int) -> None:  # noqa: N802
        at = self._at()
        self.types += [at, at + 1]
        self.lengths.append(at + 2)
        super().writeMapBegin(ktype, vtype, size)


@dataclass
class Message:
    """One serialised call: the frame body and where its forgeable bytes are."""

    method: str
    body: bytes
    lengths: list[int]
    types: list[int]


class ValueMaker:
    """Random but mostly well-formed values for a thrift_spec, drawn from `rng`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def struct(self, cls: type, spec: Any) -> Any:
        obj = cls()
        if cls.__name__ == "Tensor" and self.rng.random() < 0.8:
            return self.tensor(cls)
        for field in spec or ():
            if field is None or self.rng.random() < 0.1:
                continue  # an absent field: the server must cope with None
            _, ttype, name, args, _ = field
            setattr(obj, name, self.value(ttype, args, name))
        return obj

    def tensor(self, cls: type) -> Any:
        """A Tensor whose shape and bytes agree (calls get past the size check), or a trap."""
        if self.rng.random() < 0.1:
            shape, data = self.rng.choice(HOSTILE_TENSORS)
            return cls(shape=list(shape), data=data)
        shape = [self.rng.randint(1, 4) for _ in range(self.rng.randint(1, 2))]
        n = 1
        for dim in shape:
            n *= dim
        values = [self.rng.uniform(-0.01, 0.01) for _ in range(n)]
        return cls(shape=shape, data=struct.pack(f"<{n}d", *values))

    def value(self, ttype: int, args: Any, name: str = "") -> Any:
        rng = self.rng
        if ttype == TType.BOOL:
            return rng.random() < 0.5
        if ttype == TType.BYTE:
            return rng.randint(-128, 127)
        if ttype == TType.I16:
            return rng.randint(-(2**15), 2**15 - 1)
        if ttype == TType.I32:
            if name == "port":
                return rng.randint(1, 65535)
            return rng.choice(INTERESTING_I32) if rng.random() < 0.3 else rng.randint(0, 100)
        if ttype == TType.I64:
            return rng.choice(INTERESTING_I64) if rng.random() < 0.3 else rng.randint(0, 10_000)
        if ttype == TType.DOUBLE:
            return rng.choice(INTERESTING_DOUBLE) if rng.random() < 0.3 else rng.uniform(0, 5)
        if ttype == TType.STRING:
            return self.binary(name) if args == "BINARY" else self.text(name)
        if ttype == TType.STRUCT:
            return self.struct(args[0], args[1])
        if ttype in (TType.LIST, TType.SET):
            items = [self.value(args[0], args[1]) for _ in range(rng.randint(0, 4))]
            return set(items) if ttype == TType.SET else items
        if ttype == TType.MAP:
            return {self.value(args[0], args[1]): self.value(args[2], args[3])
                    for _ in range(rng.randint(0, 3))}
        raise ValueError(f"unknown thrift type {ttype}")

    def text(self, name: str) -> str:
        rng = self.rng
        if name == "host":
            # A registered fake node must fail fast and reach no other process: a numeric
            # loopback address other than 127.0.0.1 (servers bind 127.0.0.1, so it is
            # refused at once) needs no DNS, whose lost queries cost 5 s each.
            return f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if name == "token":
            return ""  # the fuzzed servers run without a token: calls reach the handlers
        choice = rng.random()
        if choice < 0.4:
            return hashlib.sha256(rng.randbytes(8)).hexdigest()
        if choice < 0.6:
            return ""
        if choice < 0.8:
            return "".join(rng.choice("abcxyz_-.:/0123456789") for _ in range(rng.randint(1, 24)))
        return rng.choice(["round-robin", "random", "load-aware", "job", "é€😀", "\x00\n"])

    def binary(self, name: str) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return (CSV_ROW * rng.randint(1, 8)).encode()
        return rng.randbytes(rng.randint(0, 96))


def valid_message(rng: random.Random, method: str, args_cls: type, seqid: int) -> Message:
    """A well-formed CALL of `method` with random arguments, serialised and annotated."""
    args = ValueMaker(rng).struct(args_cls, args_cls.thrift_spec)
    if getattr(args, "data", None) is not None and hasattr(args, "digest") and rng.random() < 0.7:
        args.digest = hashlib.sha256(args.data).hexdigest()  # an upload the server accepts
    buffer = TMemoryBuffer()
    proto = RecordingProtocol(buffer)
    proto.writeMessageBegin(method, TMessageType.CALL, seqid)
    args.write(proto)
    proto.writeMessageEnd()
    return Message(method, buffer.getvalue(), proto.lengths, proto.types)


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


def message_header(name: bytes, mtype: int, seqid: int) -> bytes:
    return I32.pack(VERSION_1 | mtype) + I32.pack(len(name)) + name + I32.pack(seqid)


@dataclass
class FuzzInput:
    """Bytes to send, how they were made, and whether they form whole frames."""

    kind: str
    method: str
    payload: bytes
    whole_frames: bool  # True: the frame lengths match the bytes (a reply or a close is due)


class Mutator:
    """Turns valid messages into hostile ones; every choice comes from `rng`."""

    def __init__(self, rng: random.Random, calls: dict[str, type], max_frame_bytes: int) -> None:
        self.rng = rng
        self.calls = calls
        self.methods = sorted(calls)
        self.max_frame_bytes = max_frame_bytes
        self.kinds = [
            ("valid", 12), ("flip_bytes", 12), ("cut_body", 8), ("cut_frame", 6),
            ("forge_length", 14), ("swap_type", 10), ("forge_frame_length", 5),
            ("oversized_header", 2), ("huge_claim", 1), ("garbage", 6),
            ("garbage_frame", 6), ("wrong_method", 6), ("wrong_message_type", 5),
            ("old_header", 3), ("seqid", 3), ("splice", 4), ("pipelined", 4),
            ("empty_frame", 1),
        ]
        self._weights = [w for _, w in self.kinds]

    def valid(self) -> Message:
        method = self.rng.choice(self.methods)
        return valid_message(self.rng, method, self.calls[method], self.rng.randint(0, 2**31 - 1))

    def next(self) -> FuzzInput:
        (kind,) = self.rng.choices([k for k, _ in self.kinds], self._weights)
        return getattr(self, f"_{kind}")()

    # Each mutator returns one FuzzInput.

    def _valid(self) -> FuzzInput:
        msg = self.valid()
        return FuzzInput("valid", msg.method, frame(msg.body), True)

    def _flip_bytes(self) -> FuzzInput:
        msg = self.valid()
        body = bytearray(msg.body)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(body))
            if self.rng.random() < 0.5:
                body[i] ^= 1 << self.rng.randrange(8)
            else:
                body[i] = self.rng.randrange(256)
        return FuzzInput("flip_bytes", msg.method, frame(bytes(body)), True)

    def _cut_body(self) -> FuzzInput:
        """A field cut short inside a frame whose length tells the truth."""
        msg = self.valid()
        body = msg.body[: self.rng.randrange(len(msg.body))]
        return FuzzInput("cut_body", msg.method, frame(body), True)

    def _cut_frame(self) -> FuzzInput:
        """The header promises the whole message, the connection ends sooner."""
        msg = self.valid()
        whole = frame(msg.body)
        return FuzzInput("cut_frame", msg.method, whole[: self.rng.randrange(len(whole))], False)

    def _forge_length(self) -> FuzzInput:
        """A string, binary, list or map size replaced by a lie."""
        msg = self.valid()
        if not msg.lengths:
            return self._flip_bytes()
        at = self.rng.choice(msg.lengths)
        (real,) = I32.unpack_from(msg.body, at)
        lie = self.rng.choice([*INTERESTING_I32, real + 1, real - 1, real * 2,
                               self.rng.randint(-(2**31), 2**31 - 1)])
        body = msg.body[:at] + I32.pack(lie) + msg.body[at + 4:]
        return FuzzInput("forge_length", msg.method, frame(body), True)

    def _swap_type(self) -> FuzzInput:
        """A field's or a container element's type byte replaced by another type."""
        msg = self.valid()
        if not msg.types:
            return self._flip_bytes()
        body = bytearray(msg.body)
        for at in self.rng.sample(msg.types, min(len(msg.types), self.rng.randint(1, 2))):
            body[at] = self.rng.choice(TYPE_BYTES)
        return FuzzInput("swap_type", msg.method, frame(bytes(body)), True)

    def _forge_frame_length(self) -> FuzzInput:
        """The frame header disagrees with the bytes that follow (longer or shorter)."""
        msg = self.valid()
        size = len(msg.body)
        lie = self.rng.choice([0, 1, 3, size - 1, size + 1, size + 100, size * 2, 1 << 20])
        return FuzzInput("forge_frame_length", msg.method, FRAME.pack(lie) + msg.body, False)

    def _oversized_header(self) -> FuzzInput:
        """A frame length past the limit, or negative: refused without allocating."""
        lie = self.rng.choice([self.max_frame_bytes + 1, 2**31 - 1, -1, -(2**31),
                               self.rng.randint(self.max_frame_bytes + 1, 2**31 - 1)])
        tail = self.rng.randbytes(self.rng.randint(0, 64))
        return FuzzInput("oversized_header", "", FRAME.pack(lie) + tail, False)

    def _huge_claim(self) -> FuzzInput:
        """A frame length just within the limit, followed by almost nothing."""
        lie = self.rng.randint(self.max_frame_bytes // 2, self.max_frame_bytes)
        return FuzzInput("huge_claim", "", FRAME.pack(lie) + self.rng.randbytes(16), False)

    def _garbage(self) -> FuzzInput:
        data = self.rng.randbytes(self.rng.randint(1, 512))
        return FuzzInput("garbage", "", data, False)

    def _garbage_frame(self) -> FuzzInput:
        """A frame whose length is right and whose body is noise."""
        body = self.rng.randbytes(self.rng.randint(0, 512))
        if self.rng.random() < 0.5:  # noise behind a plausible message header
            name = self.rng.choice(self.methods).encode()
            body = message_header(name, TMessageType.CALL, 1) + body
        return FuzzInput("garbage_frame", "", frame(body), True)

    def _wrong_method(self) -> FuzzInput:
        """One method's arguments under another method's name, or under no method's."""
        msg = self.valid()
        name = self.rng.choice([*(m.encode() for m in self.methods), b"", b"pingx", b"PING",
                                b"ping\x00", b"a" * 300, b"\xff\xfe", b"process"])
        body = message_header(name, TMessageType.CALL, 7) + _args_of(msg)
        return FuzzInput("wrong_method", msg.method, frame(body), True)

    def _wrong_message_type(self) -> FuzzInput:
        msg = self.valid()
        mtype = self.rng.choice(MESSAGE_TYPES)
        body = message_header(msg.method.encode(), mtype, 9) + _args_of(msg)
        return FuzzInput("wrong_message_type", msg.method, frame(body), True)

    def _old_header(self) -> FuzzInput:
        """The non-strict header (name first), or a strict one with a wrong version."""
        msg = self.valid()
        name = msg.method.encode()
        if self.rng.random() < 0.5:
            head = I32.pack(len(name)) + name + bytes([TMessageType.CALL]) + I32.pack(3)
        else:
            version = self.rng.choice([0x80020000 - 2**32, 0x80000000 - 2**32, 0x7FFF0001])
            head = I32.pack(version | TMessageType.CALL) + I32.pack(len(name)) + name + I32.pack(3)
        return FuzzInput("old_header", msg.method, frame(head + _args_of(msg)), True)

    def _seqid(self) -> FuzzInput:
        msg = self.valid()
        seqid = self.rng.choice([0, -1, 2**31 - 1, -(2**31), self.rng.randint(-(2**31), -1)])
        body = message_header(msg.method.encode(), TMessageType.CALL, seqid) + _args_of(msg)
        return FuzzInput("seqid", msg.method, frame(body), True)

    def _splice(self) -> FuzzInput:
        """The head of one call glued to the tail of another."""
        a, b = self.valid(), self.valid()
        body = a.body[: self.rng.randrange(len(a.body) + 1)] + b.body[
            self.rng.randrange(len(b.body) + 1):]
        return FuzzInput("splice", a.method, frame(body), True)

    def _pipelined(self) -> FuzzInput:
        """Several calls in one send, the last one possibly broken."""
        parts = [frame(self.valid().body) for _ in range(self.rng.randint(2, 5))]
        if self.rng.random() < 0.5:
            parts[-1] = parts[-1][: self.rng.randrange(len(parts[-1]))]
        return FuzzInput("pipelined", "", b"".join(parts), False)

    def _empty_frame(self) -> FuzzInput:
        return FuzzInput("empty_frame", "", FRAME.pack(0), True)


def _args_of(msg: Message) -> bytes:
    """The arguments struct of a strict-header message (everything after the header)."""
    (name_len,) = I32.unpack_from(msg.body, 4)
    return msg.body[8 + name_len + 4:]
