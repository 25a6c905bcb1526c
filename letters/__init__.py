"""The letter-recognition dataset: the default shards, a faithful generator and a splitter.

Data files are CSV, one sample per line: 16 integer attributes in 0..15, then the class label
as an integer (A=0 .. Z=25). A dataset directory holds train_letters1.txt .. train_lettersN.txt
and validate_letters.txt.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_data_dir", "DEFAULT_SAMPLES", "DEFAULT_SHARDS", "DEFAULT_VALIDATE"]

# The committed default dataset is `generate` with these values and the default seed.
DEFAULT_SAMPLES = 20_000
DEFAULT_SHARDS = 16
DEFAULT_VALIDATE = 4_000


def default_data_dir() -> Path:
    """The installed default dataset (16 x 1,000 training rows + 4,000 validation rows)."""
    return Path(__file__).resolve().parent / "data"
