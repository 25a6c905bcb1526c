"""Strict parsing and validation of data files: the one reader every component uses.

Two formats are accepted, one per file:

- numeric: ``f1,...,fd,label`` -- d integer features, then an integer label >= 0;
- UCI:     ``L,f1,...,fd``      -- a capital letter first (A=0 .. Z=25), then d integer features.

A file is parsed by numpy's C reader (fast path: a million rows in seconds); when that fails,
a line-by-line scan finds the first bad line so the error can name file, line and cause.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "DataDir",
    "Rows",
    "parse_data",
    "read_data_file",
    "read_data_dir",
]

_INT = re.compile(r"[+-]?\d+")
_LETTER = re.compile(r"[A-Z]")
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line (1-based) and the cause."""

    def __init__(self, name: str, message: str, line: int | None = None) -> None:
        where = f"{name} line {line}" if line is not None else name
        super().__init__(f"{where}: {message}")
        self.name = name
        self.line = line


@dataclass(frozen=True)
class Rows:
    """Labelled rows: x (n, d) features, y (n,) class labels, row i of each the same sample."""

    x: np.ndarray
    y: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.x)

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])


class Dataset(Rows):
    """Rows of one file: x is (n, d) float64, y is (n,) int64 class labels."""


@dataclass
class DataDir:
    """A dataset directory: training shards in natural order, one validation file."""

    train: list[tuple[Path, Dataset]]
    validate: Dataset
    n_features: int
    n_classes: int


def parse_data(data: bytes | str, name: str, *, n_classes: int | None = None) -> Dataset:
    """Parse one file's content (numeric or UCI format); raise DataError naming `name`."""
    text = _decode(data, name)
    body = text.rstrip()
    if not body.strip():
        raise DataError(name, "empty file (no rows)")
    lines = body.split("\n")
    first = lines[0].lstrip()
    uci = bool(first) and first[0].isalpha()
    x, y = _fast_parse(body, lines, uci)
    if x is None or y is None or _BLANK_LINE.search(body):
        _scan(lines, name, uci)  # raises with the precise line
        raise DataError(name, "could not be parsed")  # pragma: no cover - scan always raises
    _check_labels(y, lines, name, n_classes)
    return Dataset(x=np.ascontiguousarray(x, dtype=np.float64), y=y.astype(np.int64))


def read_data_file(path: str | Path, *, n_classes: int | None = None) -> Dataset:
    """Read and parse one data file; DataError names the file's basename."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(p.name, f"cannot read file: {exc.strerror or exc}") from None
    return parse_data(raw, p.name, n_classes=n_classes)


def read_data_dir(path: str | Path) -> DataDir:
    """Read train_*.txt (natural order) and exactly one validate_*.txt from a directory."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(str(root), "not a directory")
    train_paths = sorted(root.glob("train_*.txt"), key=lambda p: _natural_key(p.name))
    validate_paths = sorted(root.glob("validate_*.txt"))
    if not train_paths:
        raise DataError(str(root), "no training files (train_*.txt)")
    if len(validate_paths) != 1:
        found = ", ".join(p.name for p in validate_paths) or "none"
        raise DataError(str(root), f"expected exactly one validate_*.txt, found {found}")
    train = [(p, read_data_file(p)) for p in train_paths]
    validate = read_data_file(validate_paths[0])
    ref_path, ref = train[0]
    for p, ds in [*train[1:], (validate_paths[0], validate)]:
        if ds.n_features != ref.n_features:
            raise DataError(
                p.name,
                f"{ds.n_features} features, but {ref_path.name} has {ref.n_features}",
                line=1,
            )
    n_classes = int(max(int(ds.y.max()) for _, ds in [*train, (None, validate)])) + 1
    return DataDir(train=train, validate=validate, n_features=ref.n_features, n_classes=n_classes)


def _decode(data: bytes | str, name: str) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DataError(name, "not UTF-8 text", line=line) from None
    return text.replace("\r\n", "\n")


def _fast_parse(
    body: str, lines: list[str], uci: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Parse with numpy's C reader; return (None, None) when anything is off."""
    try:
        if uci:
            heads, _, rests = zip(*(line.partition(",") for line in lines), strict=True)
            if not set(heads) <= _LETTERS or "" in rests:
                return None, None
            x = _loadtxt("\n".join(rests))
            y = np.frombuffer("".join(heads).encode("ascii"), dtype=np.uint8).astype(np.int64)
            y -= ord("A")
        else:
            table = _loadtxt(body)
            if table.shape[1] < 2:
                return None, None
            x, y = table[:, :-1], table[:, -1]
    except ValueError:
        return None, None
    if x.shape[0] != len(lines) or x.shape[1] < 1:
        return None, None  # loadtxt skipped a blank line: let the scan name it
    return x, y


_LETTERS = frozenset(chr(c) for c in range(ord("A"), ord("Z") + 1))


def _loadtxt(text: str) -> np.ndarray:
    return np.loadtxt(
        io.StringIO(text), dtype=np.int64, delimiter=",", comments=None, ndmin=2
    )


def _scan(lines: list[str], name: str, uci: bool) -> None:
    """Check every line; raise DataError at the first bad one."""
    n_fields: int | None = None
    for i, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            raise DataError(name, "blank line", line=i)
        fields = [f.strip() for f in stripped.split(",")]
        if n_fields is None:
            n_fields = len(fields)
            if n_fields < 2:
                raise DataError(name, f"expected at least 2 fields, got {n_fields}", line=i)
        elif len(fields) != n_fields:
            raise DataError(name, f"expected {n_fields} fields, got {len(fields)}", line=i)
        head = fields[0]
        line_is_uci = bool(head) and head[0].isalpha()
        if line_is_uci != uci:
            kind = "a letter label first" if line_is_uci else "a number first"
            fmt = "UCI (letter first)" if uci else "numeric (label last)"
            raise DataError(name, f"mixed formats: {kind} in a {fmt} file", line=i)
        if uci and not _LETTER.fullmatch(head):
            raise DataError(name, f"label {head!r} is not a capital letter A-Z", line=i)
        values = fields[1:] if uci else fields
        for j, value in enumerate(values, start=2 if uci else 1):
            if not _INT.fullmatch(value):
                raise DataError(name, f"field {j}: {value!r} is not an integer", line=i)


def _check_labels(y: np.ndarray, lines: list[str], name: str, n_classes: int | None) -> None:
    bad = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = ">= 0" if n_classes is None else f"in 0..{n_classes - 1}"
        raise DataError(name, f"label {int(y[i])} out of range (must be {allowed})", line=i + 1)


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts train_letters2 before train_letters10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
