"""Which data a run trains on, and what a person should know about it before it starts.

DATA_DIR is a directory of shards, or the name of a built-in dataset (`letters`): the
seed's own command names `letters`, and from the repository root that is also the package
directory, which holds code, not shards.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcore.data import DataDir, read_data_dir

# name -> module whose default_data_dir() gives the installed shards
BUILTIN_DATASETS = {"letters": "letters"}


class UnknownDataDir(ValueError):
    """DATA_DIR is neither a directory nor the name of a built-in dataset."""


def _has_shards(path: Path) -> bool:
    return path.is_dir() and any(path.glob("train_*.txt"))


def resolve_data_dir(given: Path) -> tuple[Path, str | None]:
    """(directory to read, a one-line note when a built-in dataset stands in for `given`).

    A directory with shards is itself; a bare name of a built-in dataset (`letters`) that
    is no such directory, or one without shards, is that dataset wherever the client runs.
    """
    if _has_shards(given):
        return given, None
    name = str(given).rstrip("/")
    if name in BUILTIN_DATASETS:
        builtin: Path = importlib.import_module(BUILTIN_DATASETS[name]).default_data_dir()
        return builtin, f"data: {name} is the built-in {name} dataset ({builtin})"
    if not given.exists():
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise UnknownDataDir(
            f"DATA_DIR {str(given)!r} does not exist and is not a built-in dataset ({known})"
        )
    if not given.is_dir():
        raise UnknownDataDir(f"DATA_DIR {str(given)!r} is a file, not a directory")
    return given, None  # read_data_dir says what is missing


@dataclass(frozen=True)
class DataSummary:
    """What a person choosing data wants to know, without the rows themselves."""

    shards: int
    rows: int
    attributes: int
    classes: int
    validation_rows: int


def summarize(data: DataDir) -> DataSummary:
    return DataSummary(len(data.train), sum(dataset.n_rows for _, dataset in data.train),
                       data.n_features, data.n_classes, data.validate.n_rows)


def read_summary(path: Path) -> DataSummary:
    """Read a data directory to summarise it; DataError (a ValueError) if it is not one."""
    return summarize(read_data_dir(path))


def describe(data: DataDir, path: Path) -> str:
    """One line: shards, rows, attributes, classes, validation rows."""
    s = summarize(data)
    return (f"data: {s.shards} training shards, {s.rows} rows, {s.attributes} "
            f"attributes, {s.classes} classes; {s.validation_rows} validation rows ({path})")


def empty_classes(data: DataDir) -> list[int]:
    """Class labels below n_classes that no training row carries."""
    seen = np.zeros(data.n_classes, dtype=bool)
    for _, dataset in data.train:
        seen[dataset.y] = True
    return [int(c) for c in np.flatnonzero(~seen)]


def empty_classes_warning(data: DataDir) -> str | None:
    """A one-line warning when some classes have no training rows (a label typo, often)."""
    empty = empty_classes(data)
    if not empty:
        return None
    return (f"warning: {len(empty)} of {data.n_classes} classes have no training rows "
            f"({_ranges(empty)}); the model still has {data.n_classes} outputs: is a label "
            f"mistyped (the largest is {data.n_classes - 1})?")


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


class ClassNamesError(ValueError):
    """--class-names does not fit the data (count, empty or repeated names)."""


LETTER_NAMES = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
# Written by `letters split` and `letters generate` (and the built-in dataset): rows whose
# labels 0..25 mean A..Z.
LETTERS_VALIDATE_FILE = "validate_letters.txt"


def is_letter_first(path: Path) -> bool:
    """The file is in the UCI format (a capital letter, then the attributes)."""
    with path.open("rb") as f:
        head = f.read(64).lstrip()[:1]
    return head.isalpha()


def class_names_for(data_dir: Path, data: DataDir, given: str = "auto") -> tuple[str, ...]:
    """The model's class names: `given` as a comma list, `letters` (A..Z), `numbers`
    ("0".."k-1"), or `auto`: A..Z for the letters task, numbers otherwise.

    The letters task is 26 classes in the letters layout (validate_letters.txt: the built-in
    dataset, `letters split`, `letters generate`) or in files in the UCI letter-first format.
    ClassNamesError when a list does not name every class once.
    """
    k = data.n_classes
    if given == "numbers":
        return tuple(str(i) for i in range(k))
    if given == "letters" or (given == "auto" and _is_letters_task(data_dir, data)):
        if k > len(LETTER_NAMES):
            raise ClassNamesError(f"--class-names letters: the data has {k} classes, "
                                  "more than A..Z")
        return LETTER_NAMES[:k]
    if given == "auto":
        return tuple(str(i) for i in range(k))
    names = tuple(part.strip() for part in given.split(","))
    if len(names) != k:
        raise ClassNamesError(f"--class-names gives {len(names)} names, the data has {k} classes")
    if not all(names) or len(set(names)) != k:
        raise ClassNamesError("--class-names: every name must be non-empty and different")
    return names


def _is_letters_task(data_dir: Path, data: DataDir) -> bool:
    if data.n_classes != len(LETTER_NAMES):
        return False
    if (data_dir / LETTERS_VALIDATE_FILE).is_file():
        return True
    return all(is_letter_first(path) for path, _ in data.train)
