"""Datasets by name: directories of shards under --data-root, and the built-in letters.

People name data, never paths: a name is one plain path component, and the directory it
names must resolve (symlinks followed) to somewhere under the root, so no name reaches a
file the operator did not put there. A dataset is read once to describe it and described
again only when its files change.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from client.dataset import BUILTIN_DATASETS, read_summary, resolve_data_dir

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
log = logging.getLogger("fedcluster.gateway.datasets")


class BadDatasetName(ValueError):
    """Not a plain name, or a name whose directory lies outside the root."""


class UnknownDataset(LookupError):
    """A plain name that names no dataset here."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shards: int
    rows: int
    attributes: int
    classes: int
    validation_rows: int


class Catalogue:
    """The datasets a gateway offers: every readable shard directory under the root, plus
    the built-in datasets the root does not shadow."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._described: dict[str, tuple[tuple, DatasetInfo | None]] = {}

    def path(self, name: str) -> Path:
        """The directory a job on `name` reads; BadDatasetName / UnknownDataset otherwise."""
        if not NAME.fullmatch(name) or name in (".", ".."):
            raise BadDatasetName(
                f"dataset {name[:80]!r} is not a dataset name (letters, digits, '.', '_', "
                "'-'; at most 64; no paths): GET /v1/datasets lists the names"
            )
        candidate = self.root / name
        if candidate.exists():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(self.root) or resolved == self.root:
                raise BadDatasetName(f"dataset {name!r} leads outside the data root")
            if resolved.is_dir() and any(resolved.glob("train_*.txt")):
                return resolved
        if name in BUILTIN_DATASETS:
            return resolve_data_dir(Path(name))[0]
        raise UnknownDataset(f"no dataset {name!r}: GET /v1/datasets lists the names")

    def describe(self, name: str) -> DatasetInfo | None:
        """What the dataset holds; None when its files cannot be read as one (logged)."""
        path = self.path(name)
        fingerprint = _fingerprint(path)
        with self._lock:
            cached = self._described.get(name)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            s = read_summary(path)
            info: DatasetInfo | None = DatasetInfo(name, s.shards, s.rows, s.attributes,
                                                   s.classes, s.validation_rows)
        except (ValueError, OSError) as exc:  # DataError is a ValueError
            log.warning("dataset %s is not offered: %s", name, exc)
            info = None
        with self._lock:
            self._described[name] = (fingerprint, info)
        return info

    def names(self) -> list[str]:
        found = set()
        try:
            entries = list(self.root.iterdir())
        except OSError as exc:
            log.warning("cannot list the data root %s: %s", self.root, exc)
            entries = []
        for entry in entries:
            if NAME.fullmatch(entry.name) and entry.is_dir():
                found.add(entry.name)
        found.update(BUILTIN_DATASETS)
        return sorted(found)

    def list(self) -> list[DatasetInfo]:
        infos = []
        for name in self.names():
            try:
                info = self.describe(name)
            except (BadDatasetName, UnknownDataset):
                continue
            if info is not None:
                infos.append(info)
        return infos


def _fingerprint(path: Path) -> tuple:
    """Names, sizes and modification times of the data files: changes when they do."""
    files = sorted(p for p in path.iterdir() if p.suffix == ".txt" or p.name.endswith(".data"))
    return tuple((p.name, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
