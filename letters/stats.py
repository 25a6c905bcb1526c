"""Per-attribute summary and class counts of a data file or a dataset directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from letters.attributes import NAMES
from mlcore.data import Dataset, read_data_dir, read_data_file


def load_any(path: Path) -> tuple[Dataset, int]:
    """A file, or all files of a dataset directory stacked: (rows, number of files)."""
    if path.is_dir():
        d = read_data_dir(path)
        parts = [ds for _, ds in d.train] + [d.validate]
        x = np.concatenate([p.x for p in parts])
        return Dataset(x, np.concatenate([p.y for p in parts])), len(parts)
    return read_data_file(path), 1


def describe(data: Dataset) -> str:
    """A table of mean/std/min/max per attribute, then the count of every class."""
    d = data.n_features
    names = NAMES if d == len(NAMES) else [f"f{j + 1}" for j in range(d)]
    lines = [f"{'attribute':<9} {'mean':>7} {'std':>7} {'min':>5} {'max':>5}"]
    x = data.x
    for j, name in enumerate(names):
        col = x[:, j]
        lines.append(
            f"{name:<9} {col.mean():7.2f} {col.std():7.2f} {col.min():5.0f} {col.max():5.0f}"
        )
    counts = np.bincount(data.y)
    letters = data.y.max() < 26
    label = (lambda c: chr(ord("A") + c)) if letters else str
    lines.append("class counts: " + " ".join(f"{label(c)}={n}" for c, n in enumerate(counts)))
    return "\n".join(lines)
