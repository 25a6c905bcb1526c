"""The 26 Latin capitals of the Hershey fonts as flat tables of line segments.

Frey & Slate drew their letters from the Hershey vector fonts; the `Hershey-Fonts` package
ships the same glyphs. Several of its font names are aliases of one another (futural =
rowmans, futuram = rowmand, rowmant = timesrb, scripts = cursive, gothgbt = gothiceng,
gothgrt = gothicger, gothitt = gothicita), so only the distinct designs are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# One entry per distinct Latin design: the stroke styles (simplex, duplex, complex, triplex)
# crossed with the letter styles (block, italic, script, English/German/Italian gothic).
FONTS: tuple[str, ...] = (
    "futural",  # Roman simplex (block)
    "futuram",  # Roman duplex
    "timesr",  # Roman complex
    "rowmant",  # Roman triplex
    "timesi",  # Italic complex
    "timesib",  # Italic triplex
    "scripts",  # Script simplex
    "scriptc",  # Script complex
    "gothiceng",  # English gothic
    "gothicger",  # German gothic
    "gothicita",  # Italian gothic
)

# How often each design is drawn. Frey & Slate's 20 fonts were mostly block and italic (the
# Hershey set has them in several stroke styles and sizes), with script and gothic a minority:
# a block/italic design drawn 2.5x as often as a script/gothic one (about 15 of 20 fonts
# block/italic) cut the fidelity error (scripts/letters_fidelity.py) from 22.1% to 19.4%
# with the current distortions; 2x and 3x gave the same, halving scripts or gothics 20-21%,
# and block/italic alone 30-32% (measured with an earlier, thicker pen).
FONT_WEIGHTS: tuple[float, ...] = (2.5,) * 6 + (1.0,) * 5

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Hershey glyphs put the cap line at y=-12 and the base line at y=+9 (y grows downwards).
_CAP_LINE, _BASE_LINE = -12.0, 9.0


@dataclass(frozen=True)
class GlyphTable:
    """All segments of all (font, letter) glyphs, normalised to unit cap height.

    segments: (m, 4) float64 rows x0, y0, x1, y1 with y upwards, the glyph's box centred on x=0
    and the cap band on y in [-0.5, 0.5]; start/count: (n_fonts, 26) index into segments.
    """

    segments: np.ndarray
    start: np.ndarray
    count: np.ndarray


@lru_cache(maxsize=1)
def glyph_table() -> GlyphTable:
    """Load every glyph once (the fonts parse in well under a second)."""
    from HersheyFonts import HersheyFonts

    fonts = HersheyFonts()
    chunks: list[np.ndarray] = []
    start = np.zeros((len(FONTS), len(LETTERS)), dtype=np.int64)
    count = np.zeros_like(start)
    offset = 0
    for f, name in enumerate(FONTS):
        fonts.load_default_font(name)
        for c, letter in enumerate(LETTERS):
            segs = _segments(fonts.strokes_for_text(letter))
            start[f, c], count[f, c] = offset, len(segs)
            chunks.append(segs)
            offset += len(segs)
    return GlyphTable(np.concatenate(chunks), start, count)


def _segments(strokes) -> np.ndarray:
    """Polylines in font units -> (m, 4) normalised segments."""
    rows = []
    for stroke in strokes:
        pts = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        rows.append(np.hstack([pts[:-1], pts[1:]]))
    segs = np.concatenate(rows)
    height = _BASE_LINE - _CAP_LINE
    xs = segs[:, [0, 2]]
    segs[:, [0, 2]] = (xs - (xs.min() + xs.max()) / 2) / height
    segs[:, [1, 3]] = ((_CAP_LINE + _BASE_LINE) / 2 - segs[:, [1, 3]]) / height
    return segs
