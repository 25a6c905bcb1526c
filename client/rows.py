"""Rows to predict, read from a CSV file: attributes only, attributes then a label, or the
UCI format (a letter, then the attributes).

The model says how many attributes a row has (d), so the first line's width decides the
layout: d fields are attributes only, d + 1 end with a label, and a first field that is a
letter starts a UCI row. Every line must have the first line's layout. Numbers may be
integers or decimals (finite). A bad line is one error naming the file and the line (one
row per line: blank lines are refused, so the line number is the row number).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class RowError(ValueError):
    """A row that cannot be predicted; the message names the file and the line."""

    def __init__(self, name: str, message: str, line: int | None = None) -> None:
        where = f"{name} line {line}" if line is not None else name
        super().__init__(f"{where}: {message}")
        self.line = line


@dataclass(frozen=True)
class Layout:
    """What a file's lines hold: an optional leading letter, d attributes, an optional label."""

    n_features: int
    letter_first: bool = False
    label_last: bool = False

    @property
    def n_fields(self) -> int:
        return self.n_features + int(self.letter_first) + int(self.label_last)

    def describe(self) -> str:
        if self.letter_first:
            return f"a letter and {self.n_features} attributes"
        if self.label_last:
            return f"{self.n_features} attributes and a label"
        return f"{self.n_features} attributes"


@dataclass(frozen=True)
class InputRows:
    """x: (n, d) float64 attributes, row i from line i + 1; the layout they were read in."""

    x: np.ndarray
    layout: Layout


def read_rows(path: Path, n_features: int) -> InputRows:
    """Read a file of rows for a model with `n_features` attributes; RowError if malformed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RowError(path.name, f"cannot read file: {exc.strerror or exc}") from None
    return parse_rows(raw, path.name, n_features)


def parse_rows(raw: bytes | str, name: str, n_features: int) -> InputRows:
    """Rows from a file's content (see the module's docstring); RowError naming `name`."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise RowError(name, "not UTF-8 text", line) from None
    else:
        text = raw
    lines = text.replace("\r\n", "\n").rstrip().split("\n")
    if not lines[0].strip():
        raise RowError(name, "no rows (empty file)")
    layout = _layout(lines[0], name, n_features)
    x = _fast_parse(lines, layout)
    if x is None:
        x = _scan(lines, name, layout)
    return InputRows(np.ascontiguousarray(x, dtype=np.float64), layout)


def _layout(first: str, name: str, n_features: int) -> Layout:
    fields = [f.strip() for f in first.split(",")]
    if fields[0][:1].isalpha():
        return Layout(n_features, letter_first=True)
    if len(fields) in (n_features, n_features + 1):
        return Layout(n_features, label_last=len(fields) == n_features + 1)
    raise RowError(name, f"expected {n_features} fields (the model's attributes) or "
                         f"{n_features + 1} (attributes and a label), got {len(fields)}", 1)


def _fast_parse(lines: list[str], layout: Layout) -> np.ndarray | None:
    """numpy's C reader over the attribute columns; None when anything is off."""
    body: Sequence[str] = lines
    if layout.letter_first:
        heads, _, body = zip(*(line.partition(",") for line in lines), strict=True)
        if not all(h.strip()[:1].isalpha() for h in heads):
            return None
    try:
        table = np.loadtxt(io.StringIO("\n".join(body)), dtype=np.float64, delimiter=",",
                           comments=None, ndmin=2)
    except ValueError:
        return None
    want = layout.n_features + int(layout.label_last)
    if table.shape != (len(lines), want) or not np.isfinite(table).all():
        return None  # a skipped blank line, a wrong width, nan or inf: the scan names it
    return table[:, : layout.n_features]


def _scan(lines: list[str], name: str, layout: Layout) -> np.ndarray:
    """Check every line; RowError at the first bad one, else the attributes."""
    x = np.empty((len(lines), layout.n_features))
    first = 1 if layout.letter_first else 0
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise RowError(name, "blank line (one row per line)", i)
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != layout.n_fields:
            raise RowError(name, f"expected {layout.n_fields} fields ({layout.describe()}, "
                                 f"as line 1), got {len(fields)}", i)
        if layout.letter_first and not fields[0][:1].isalpha():
            raise RowError(name, f"field 1: {fields[0]!r} is not a letter (line 1 starts "
                                 "with one: the UCI format)", i)
        for j, value in enumerate(fields[first:], start=first + 1):
            if not _NUMBER.fullmatch(value):
                raise RowError(name, f"field {j}: {value!r} is not a number", i)
            if j - first <= layout.n_features:
                x[i - 1, j - first - 1] = float(value)
        if not np.isfinite(x[i - 1]).all():  # 1e999
            raise RowError(name, "a value is too large for a float64", i)
    return x
