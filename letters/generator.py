"""Seeded generation of letter samples in fixed blocks, so output never depends on chunking.

Sample i belongs to block i // BLOCK, and block b draws everything from its own generator
seeded with (seed, b). Within a block the labels are consecutive random permutations of the
26 classes, so any run of rows is balanced to within a couple of samples per class.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from letters.attributes import raw_attributes, scale_attributes
from letters.glyphs import FONT_WEIGHTS, FONTS, LETTERS, glyph_table
from letters.layout import prepare_out_dir, write_layout
from letters.partition import EQUAL, SizeSpec, plan_shards, write_assigned
from letters.render import draw_distortions, rasterise

N_CLASSES = len(LETTERS)
BLOCK = N_CLASSES * 40  # samples per block: whole permutations of the classes
DEFAULT_SEED = 1
_FONT_P = np.asarray(FONT_WEIGHTS) / sum(FONT_WEIGHTS)


def block_rng(seed: int, block: int) -> np.random.Generator:
    """The generator that block `block` of a run seeded with `seed` draws from."""
    return np.random.default_rng(np.random.SeedSequence([seed, block]))


def generate_block(seed: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Render block `block`: (BLOCK, 16) raw float64 attributes and (BLOCK,) int64 labels."""
    rng = block_rng(seed, block)
    labels = _draw_labels(rng)
    fonts = rng.choice(len(FONTS), BLOCK, p=_FONT_P)
    images = rasterise(glyph_table(), fonts, labels, draw_distortions(rng, BLOCK))
    return raw_attributes(images), labels.astype(np.int64)


def _draw_labels(rng: np.random.Generator) -> np.ndarray:
    """A block's labels: its generator's first draws, whole permutations of the classes."""
    return np.concatenate([rng.permutation(N_CLASSES) for _ in range(BLOCK // N_CLASSES)])


def generate_labels(seed: int, n_samples: int) -> np.ndarray:
    """The labels generate_rows(seed, n_samples) yields, without rendering anything."""
    blocks = [_draw_labels(block_rng(seed, b)) for b in range(-(-n_samples // BLOCK))]
    labels = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    return labels[:n_samples].astype(np.int64)


def generate_rows(seed: int, n_samples: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (features int64 (m, 16) in 0..15, labels int64 (m,)) chunks totalling n_samples."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    for block in range(-(-n_samples // BLOCK)):
        raw, labels = generate_block(seed, block)
        take = min(BLOCK, n_samples - block * BLOCK)
        yield scale_attributes(raw[:take]), labels[:take]


def generate(seed: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """All n_samples rows in memory: (n, 16) int64 features and (n,) int64 labels."""
    chunks = list(generate_rows(seed, n_samples))
    if not chunks:
        return np.zeros((0, 16), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def generate_dataset(
    out_dir: Path,
    *,
    n_samples: int,
    n_shards: int,
    n_validate: int,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    progress: bool = False,
    dirichlet: float | None = None,
    sizes: SizeSpec = EQUAL,
) -> list[Path]:
    """Write n_samples generated rows in the seed's layout, streaming block by block.

    `dirichlet` and `sizes` skew the training shards (letters.partition); the partition is
    drawn from `seed` too, and a Dirichlet split reads the labels first (without rendering),
    so memory stays bounded by a few bytes per row.
    """
    labels = None
    if dirichlet is not None:
        labels = generate_labels(seed, max(n_samples - n_validate, 0))
    plan = plan_shards(n_samples, n_shards, n_validate, alpha=dirichlet, sizes=sizes,
                       seed=seed, train_labels=labels)
    prepare_out_dir(out_dir, overwrite)
    if plan.assignment is not None:
        return write_assigned(out_dir, generate_rows(seed, n_samples), plan.assignment,
                              n_shards, n_validate)
    return write_layout(
        out_dir, generate_rows(seed, n_samples), plan.sizes, n_validate, progress=progress
    )
