"""The model's weights layout, checked on shapes alone: w1 (d, h), b1 (h,), w2 (h, k), b2 (k,).

Pure Python over tuples of ints (no numpy), so every process that handles weights checks
them the same way, the coordinator included, which never does model maths.
"""

from __future__ import annotations

from collections.abc import Sequence

LAYOUT = "w1 (d, h), b1 (h,), w2 (h, k), b2 (k,)"


def mlp_dims(shapes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """(d, h, k) of four tensor shapes in wire order; ValueError naming what is off."""
    if len(shapes) != 4:
        raise ValueError(f"expected 4 tensors [w1, b1, w2, b2], got {len(shapes)}")
    w1, b1, w2, b2 = (tuple(int(n) for n in s) for s in shapes)
    shown = f"w1 {list(w1)}, b1 {list(b1)}, w2 {list(w2)}, b2 {list(b2)}"
    if (len(w1), len(b1), len(w2), len(b2)) != (2, 1, 2, 1):
        raise ValueError(f"expected {LAYOUT}; got shapes {shown}")
    (d, h), k = w1, w2[1]
    if min(d, h, k) < 1 or b1 != (h,) or w2[0] != h or b2 != (k,):
        raise ValueError(f"tensor shapes disagree: {shown} (want {LAYOUT} with d, h, k >= 1)")
    return d, h, k
