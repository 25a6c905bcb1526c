"""The 16 attributes of Frey & Slate (1991) from binary images, and their 0..15 scaling.

Coordinates: x counts pixels from the left edge, y from the bottom edge. The box is the
smallest rectangle holding every "on" pixel; u = (x - box centre x) / box width and
v = (y - box centre y) / box height place an on pixel relative to the box.

  1 x-box  horizontal position of the box centre    9 y2bar  variance of v
  2 y-box  vertical position of the box centre     10 xybar  mean (u - x-bar)(v - y-bar)
  3 width  box width                               11 x2ybr  mean (u - x-bar)^2 (v - y-bar)
  4 high   box height                              12 xy2br  mean (u - x-bar)(v - y-bar)^2
  5 onpix  number of on pixels                     13 x-ege  edges per row of the box, scanning
  6 x-bar  mean u                                         left to right (an on pixel whose left
  7 y-bar  mean v                                         neighbour is off or the border)
  8 x2bar  variance of u                           14 xegvy  sum of v over those edges / rows
                                                   15 y-ege  edges per column, scanning bottom
                                                          to top (on pixel above off/border)
                                                   16 yegvx  sum of u over those edges / columns

Moments 8-12 are central (about x-bar, y-bar): they matched the UCI letters' class means far
better than moments about the box centre (class-mean correlation 0.98-0.99 vs 0.62-0.95).
"""

from __future__ import annotations

import numpy as np

NAMES: tuple[str, ...] = (
    "x-box", "y-box", "width", "high", "onpix", "x-bar", "y-bar", "x2bar",
    "y2bar", "xybar", "x2ybr", "xy2br", "x-ege", "xegvy", "y-ege", "yegvx",
)  # fmt: skip

# Linear maps raw -> 0..15 (then rounded and clipped), one (gain, offset) per attribute.
# Frey & Slate scaled each attribute linearly into 0..15; these gains and offsets were chosen
# so that generated letters spread over 0..15 about as the UCI letters do (same mean and
# standard deviation per attribute, to within rounding); scripts/letters_fidelity.py
# prints the comparison.
GAIN = np.array([
    0.403, 0.803, 0.217, 0.285, 0.0112, 39.1, 48.3, 138.0,
    165.0, 140.0, 564.0, 618.0, 3.33, 23.7, 4.55, 26.9,
])  # fmt: skip
OFFSET = np.array([
    -1.83, -6.20, -0.73, -3.43, -0.20, 7.29, 7.26, -5.10,
    -9.15, 6.92, 6.18, 7.99, -3.55, 8.11, -4.87, 7.79,
])  # fmt: skip


def raw_attributes(images: np.ndarray) -> np.ndarray:
    """(n, H, W) bool images (row 0 on top) -> (n, 16) float64 unscaled attributes."""
    img = np.ascontiguousarray(images[:, ::-1, :], dtype=bool)  # row index = y, bottom up
    n, h, w = img.shape
    on = img.astype(np.float64)
    cols = img.any(axis=1)  # (n, w)
    rows = img.any(axis=2)  # (n, h)
    empty = ~cols.any(axis=1)
    x0 = np.argmax(cols, axis=1)
    x1 = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    y0 = np.argmax(rows, axis=1)
    y1 = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    width = (x1 - x0 + 1).astype(np.float64)
    high = (y1 - y0 + 1).astype(np.float64)
    xc, yc = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    u = (np.arange(w)[None, :] - xc[:, None]) / width[:, None]  # (n, w)
    v = (np.arange(h)[None, :] - yc[:, None]) / high[:, None]  # (n, h)
    onpix = on.sum(axis=(1, 2))
    count = np.maximum(onpix, 1.0)

    def mean_uv(a: int, b: int, du: np.ndarray | float = 0.0, dv: np.ndarray | float = 0.0):
        uu = u - np.asarray(du).reshape(-1, 1)
        vv = v - np.asarray(dv).reshape(-1, 1)
        return np.einsum("nyx,nx,ny->n", on, uu**a, vv**b) / count

    x_bar, y_bar = mean_uv(1, 0), mean_uv(0, 1)

    # Edges: an on pixel whose predecessor in the scan is off or outside the image.
    x_edge = img & ~np.pad(img, ((0, 0), (0, 0), (1, 0)))[:, :, :-1]
    y_edge = img & ~np.pad(img, ((0, 0), (1, 0), (0, 0)))[:, :-1, :]
    x_edges_per_row = x_edge.sum(axis=2).astype(np.float64)  # (n, h)
    y_edges_per_col = y_edge.sum(axis=1).astype(np.float64)  # (n, w)
    out = np.stack(
        [
            xc,
            yc,
            width,
            high,
            onpix,
            x_bar,
            y_bar,
            mean_uv(2, 0, x_bar, y_bar),
            mean_uv(0, 2, x_bar, y_bar),
            mean_uv(1, 1, x_bar, y_bar),
            mean_uv(2, 1, x_bar, y_bar),
            mean_uv(1, 2, x_bar, y_bar),
            x_edges_per_row.sum(axis=1) / high,
            (x_edges_per_row * v).sum(axis=1) / high,
            y_edges_per_col.sum(axis=1) / width,
            (y_edges_per_col * u).sum(axis=1) / width,
        ],
        axis=1,
    )
    out[empty] = 0.0
    return out


def scale_attributes(raw: np.ndarray) -> np.ndarray:
    """(n, 16) raw attributes -> (n, 16) int64 in 0..15 via the fixed linear maps."""
    return np.clip(np.rint(raw * GAIN + OFFSET), 0, 15).astype(np.int64)
