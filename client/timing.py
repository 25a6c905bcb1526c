"""timing.txt: one row per task and one per round, tab-separated, for later analysis.

The file starts with `#` comment lines (format version, job, configuration), then a
header row, then rows. Every row has every column; a column that does not apply
to the row's kind holds `-`. All times are seconds. See README "timing.txt".
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO

FORMAT = "fedcluster-timing/2"  # /2 added `declined`; /1 counted declines under `failures`
COLUMNS = (
    "kind",  # task | round
    "round",
    "shard",  # shard file name (task rows)
    "node",  # host:port whose result was used (task rows)
    "coordinator",  # host:port that ran the round
    "policy",
    "attempts",  # tries this task took (task rows); sum over tasks (round rows)
    "declined",  # tries a loaded node declined (not failures: the node is healthy)
    "failures",  # failed tries; each one's reason is in the coordinator's log
    "start_s",  # since the round started at the coordinator (task rows); 0 (round rows)
    "end_s",
    "load_delay_s",  # simulated load on the node
    "compute_s",  # training on the node
    "wait_s",  # queued on the node behind other tasks
    "transfer_s",  # end_s - start_s - the node's own total: RPC, serialisation, retries
    "n_samples",
    "train_loss",
    "train_error",
    "validation_error",  # round rows
    "round_s",  # the client's wall time for the whole round (round rows)
)
MISSING = "-"


class TimingDialect(csv.Dialect):
    """Tab-separated, one row per line, no quoting: a cell holding a tab is an error."""

    delimiter = "\t"
    lineterminator = "\n"
    quoting = csv.QUOTE_NONE
    escapechar = None
    quotechar = None
    skipinitialspace = False
    strict = True


def _cell(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


class TimingWriter:
    """Appends rows to timing.txt, flushing after every round so a crash loses nothing."""

    def __init__(self, path: Path, meta: Mapping[str, object], *, append: bool = False) -> None:
        self.path = path
        fresh = not (append and path.exists() and path.stat().st_size > 0)
        self._file: IO[str] = open(path, "w" if fresh else "a", encoding="utf-8",  # noqa: SIM115
                                   newline="")
        self._rows = csv.writer(self._file, TimingDialect)
        if fresh:
            self._file.write(f"# format={FORMAT}\n")
            for key, value in meta.items():
                self._file.write(f"# {key}={value}\n")
            self._rows.writerow(COLUMNS)
            self._file.flush()

    def write_row(self, **fields: object) -> None:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown timing columns: {sorted(unknown)}")
        self._rows.writerow(_cell(fields.get(c)) for c in COLUMNS)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_timing(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Parse a timing.txt into (meta from the comment lines, rows as dicts of strings).

    A file of format /1 gets `declined` as `-` (it counted declines under `failures`).
    """
    meta: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as file:
        body = []
        for line in file:
            if line.startswith("#"):
                key, _, value = line[1:].strip().partition("=")
                meta[key] = value
            elif line.strip():
                body.append(line)
    reader = csv.DictReader(body, dialect=TimingDialect)
    fields = reader.fieldnames or []
    old_format = "failures" in fields and "declined" not in fields
    rows = []
    for row in reader:
        if None in row or None in row.values():
            raise ValueError(f"{path} line {reader.line_num}: expected "
                             f"{len(reader.fieldnames or [])} fields")
        if old_format:
            row["declined"] = MISSING
        rows.append(row)
    return meta, rows
