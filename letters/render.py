"""Distort glyphs at random and rasterise them to binary images, a whole batch at once.

Every step is vectorised over all segments of all samples of a batch: segments are gathered
from the glyph table, warped and transformed per sample, sampled densely into points, the
points splatted into a (n, G, G) boolean stack, and strokes thickened by disk dilation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from letters.glyphs import GlyphTable

GRID = 48  # image side in pixels
_STEP_PX = 0.35  # spacing of points sampled along a segment; < 0.5 px leaves no gaps


@dataclass(frozen=True)
class Distortion:
    """Per-sample random distortion parameters; every field is a (n,) array."""

    size: np.ndarray  # cap height in pixels
    aspect: np.ndarray  # width multiplier
    rotate: np.ndarray  # radians, counter-clockwise
    shear: np.ndarray  # x += shear * y
    left: np.ndarray  # left edge of the glyph box, pixels from the image's left edge
    bottom: np.ndarray  # bottom of the cap band, pixels from the image's bottom edge
    radius: np.ndarray  # stroke radius in pixels (disk dilation)
    warp_amp: np.ndarray  # smooth jitter amplitude, in cap heights
    warp_freq: np.ndarray  # smooth jitter frequency, cycles per cap height
    warp_phase: np.ndarray  # (n, 2) phases of the x and y jitter


class Spec(TypedDict):
    """Ranges of the random distortions (see SPEC)."""

    size: tuple[float, float]
    aspect_sd: float
    rotate_sd_deg: float
    shear_sd: float
    corner_px: tuple[float, float]
    radius: tuple[tuple[float, ...], tuple[float, ...]]
    warp_amp: tuple[float, float]
    warp_freq: tuple[float, float]


# Ranges of the random distortions (sizes in units of the image side or of a cap height).
# Small letters drawn with a one-pixel pen (radius 0.5: no dilation) matched the UCI letters
# best: cap heights of 0.3-0.85 GRID with pens of 1-4 px gave 21.5% fidelity error, 0.2-0.4
# GRID with a 1 px pen 19.5% (scripts/letters_fidelity.py). Thin strokes on a coarse raster
# also tie the edge counts to the letter's size as in the real data (within-class correlation
# of onpix with x-ege: real 0.69, this pen 0.55, the former random 1-4 px pens 0.06).
# Tried without gain (within +-1 point): pens proportional to the size, margins proportional
# to the size or shared by x and y, aspect sd 0.08-0.25, stronger or faster warps, random
# per-stroke offsets, simplified (polygonal) copies of the fonts, Bresenham-like lines.
SPEC: Spec = {
    "size": (0.20, 0.40),  # cap height / GRID, uniform
    "aspect_sd": 0.18,  # log-normal width multiplier
    "rotate_sd_deg": 1.0,
    "shear_sd": 0.03,
    "corner_px": (0.5, 5.0),  # left and bottom margin, uniform
    "radius": ((0.5,), (1.0,)),  # stroke radius values and probabilities
    "warp_amp": (0.0, 0.04),
    "warp_freq": (0.5, 1.5),
}


def draw_distortions(rng: np.random.Generator, n: int) -> Distortion:
    """Draw n independent distortions (the order of draws is part of the output's bytes)."""
    size = rng.uniform(*SPEC["size"], n) * GRID
    aspect = np.exp(rng.normal(0.0, SPEC["aspect_sd"], n))
    rotate = np.deg2rad(rng.normal(0.0, SPEC["rotate_sd_deg"], n))
    shear = rng.normal(0.0, SPEC["shear_sd"], n)
    left = rng.uniform(*SPEC["corner_px"], n)
    bottom = rng.uniform(*SPEC["corner_px"], n)
    values, probs = SPEC["radius"]
    radius = rng.choice(np.array(values), size=n, p=np.array(probs))
    warp_amp = rng.uniform(*SPEC["warp_amp"], n)
    warp_freq = rng.uniform(*SPEC["warp_freq"], n)
    warp_phase = rng.uniform(0.0, 2 * np.pi, (n, 2))
    return Distortion(
        size, aspect, rotate, shear, left, bottom, radius, warp_amp, warp_freq, warp_phase
    )


def rasterise(
    table: GlyphTable, font: np.ndarray, label: np.ndarray, dist: Distortion
) -> np.ndarray:
    """Glyph (font[i], label[i]) under dist[i] for each i: (n, GRID, GRID) bool, row 0 on top."""
    n = len(label)
    seg, owner = _gather(table, font, label)
    p0 = _transform(seg[:, 0:2], owner, dist)
    p1 = _transform(seg[:, 2:4], owner, dist)
    # Place each glyph: its transformed box's lower-left corner at (left, bottom).
    # Shrink glyphs that would not fit so that no stroke leaves the image.
    lo = np.full((n, 2), np.inf)
    hi = np.full((n, 2), -np.inf)
    np.minimum.at(lo, owner, np.minimum(p0, p1))
    np.maximum.at(hi, owner, np.maximum(p0, p1))
    corner = np.stack([dist.left, dist.bottom], axis=1)
    room = GRID - 1 - dist.radius[:, None] - corner
    fit = np.minimum(1.0, (room / np.maximum(hi - lo, 1e-9)).min(axis=1))
    p0 = corner[owner] + (p0 - lo[owner]) * fit[owner, None]
    p1 = corner[owner] + (p1 - lo[owner]) * fit[owner, None]
    images = _splat(p0, p1, owner, n)
    return _thicken(images, dist.radius)


def _gather(table: GlyphTable, font: np.ndarray, label: np.ndarray):
    counts = table.count[font, label]
    owner = np.repeat(np.arange(len(label)), counts)
    first = np.cumsum(counts) - counts
    idx = table.start[font, label][owner] + (np.arange(owner.size) - first[owner])
    return table.segments[idx], owner


def _transform(pts: np.ndarray, owner: np.ndarray, d: Distortion) -> np.ndarray:
    x, y = pts[:, 0], pts[:, 1]
    amp, freq = d.warp_amp[owner], d.warp_freq[owner] * 2 * np.pi
    wx = x + amp * np.sin(freq * y + d.warp_phase[owner, 0])
    wy = y + amp * np.sin(freq * x + d.warp_phase[owner, 1])
    sx = wx * d.aspect[owner] + d.shear[owner] * wy
    c, s = np.cos(d.rotate[owner]), np.sin(d.rotate[owner])
    rx, ry = c * sx - s * wy, s * sx + c * wy
    size = d.size[owner]
    return np.stack([rx * size, ry * size], axis=1)


def _splat(p0: np.ndarray, p1: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    length = np.hypot(*(p1 - p0).T)
    n_pts = np.ceil(length / _STEP_PX).astype(np.int64) + 1
    seg = np.repeat(np.arange(len(p0)), n_pts)
    first = np.cumsum(n_pts) - n_pts
    t = (np.arange(seg.size) - first[seg]) / np.maximum(n_pts[seg] - 1, 1)
    pts = p0[seg] + (p1 - p0)[seg] * t[:, None]
    col = np.floor(pts[:, 0]).astype(np.int64)
    row = GRID - 1 - np.floor(pts[:, 1]).astype(np.int64)
    keep = (col >= 0) & (col < GRID) & (row >= 0) & (row < GRID)
    images = np.zeros((n, GRID, GRID), dtype=bool)
    images[owner[seg][keep], row[keep], col[keep]] = True
    return images


def _thicken(images: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Dilate each image by a disk of its own radius (grouped by radius)."""
    out = images.copy()
    for r in np.unique(radius):
        pick = np.flatnonzero(radius == r)
        src = images[pick]
        acc = src.copy()
        k = int(np.floor(r))
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                if (dx or dy) and dx * dx + dy * dy <= r * r:
                    acc |= _shift(src, dy, dx)
        out[pick] = acc
    return out


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out
