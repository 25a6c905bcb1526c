"""Per-attribute summary and class counts of a data file or a dataset directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from letters.attributes import NAMES
from letters.partition import label_entropy_bits
from mlcore.data import DataDir, Dataset, read_data_dir, read_data_file


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


def shard_labels(d: DataDir) -> str:
    """Per training shard: rows, classes present, label entropy and its largest class; then
    the skew in one line (mean entropy against the pooled labels', mean total variation
    distance of a shard's label distribution from the pooled one)."""
    k = d.n_classes
    letters = k <= 26
    pooled = np.sum([np.bincount(ds.y, minlength=k) for _, ds in d.train], axis=0)
    pooled_p = pooled / max(pooled.sum(), 1)
    lines = [f"{'shard':<22} {'rows':>7} {'classes':>7} {'entropy':>8} {'top class':>12}"]
    entropies, distances = [], []
    for path, ds in d.train:
        counts = np.bincount(ds.y, minlength=k)
        h = label_entropy_bits(counts)
        top = int(np.argmax(counts))
        name = chr(ord("A") + top) if letters else str(top)
        share = counts[top] / max(ds.n_rows, 1)
        entropies.append(h)
        distances.append(0.5 * float(np.abs(counts / max(ds.n_rows, 1) - pooled_p).sum()))
        lines.append(f"{path.name:<22} {ds.n_rows:>7,} {int((counts > 0).sum()):>7} "
                     f"{h:>8.2f} {name:>5} {100 * share:>5.1f}%")
    lines.append(
        f"label skew: mean shard entropy {np.mean(entropies):.2f} bits (pooled "
        f"{label_entropy_bits(pooled):.2f}, at most {np.log2(k):.2f}); mean total variation "
        f"from the pooled labels {np.mean(distances):.3f}; rows per shard "
        f"{min(ds.n_rows for _, ds in d.train):,}..{max(ds.n_rows for _, ds in d.train):,}"
    )
    return "\n".join(lines)
