"""timing.txt: one row per task and one per round, tab-separated, for later analysis.

The file starts with `#` comment lines (format version, job, configuration), then a
header row, then rows. Every row has every column; a column that does not apply
to the row's kind holds `-`. All times are seconds. See README "timing.txt".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO

FORMAT = "fedcluster-timing/1"
COLUMNS = (
    "kind",  # task | round
    "round",
    "shard",  # shard file name (task rows)
    "node",  # host:port whose result was used (task rows)
    "coordinator",  # host:port that ran the round
    "policy",
    "attempts",  # tries this task took (task rows); sum over tasks (round rows)
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


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


class TimingWriter:
    """Appends rows to timing.txt, flushing after every round so a crash loses nothing."""

    def __init__(self, path: Path, meta: Mapping[str, object], *, append: bool = False) -> None:
        self.path = path
        fresh = not (append and path.exists() and path.stat().st_size > 0)
        self._file: IO[str] = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115
        if fresh:
            self._file.write(f"# format={FORMAT}\n")
            for key, value in meta.items():
                self._file.write(f"# {key}={value}\n")
            self._file.write("\t".join(COLUMNS) + "\n")
            self._file.flush()

    def write_row(self, **fields: object) -> None:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown timing columns: {sorted(unknown)}")
        self._file.write("\t".join(_cell(fields.get(c)) for c in COLUMNS) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_timing(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Parse a timing.txt into (meta from the comment lines, rows as dicts of strings)."""
    meta: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition("=")
            meta[key] = value
        elif header is None:
            header = line.split("\t")
        elif line:
            rows.append(dict(zip(header, line.split("\t"), strict=True)))
    return meta, rows
