"""mlcore.data: the strict reader every component uses for data files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mlcore.data import DataError, parse_data, read_data_dir, read_data_file

NUMERIC = "1,2,3,0\n4,5,6,2\n7,8,9,1\n"
UCI = "A,1,2,3\nC,4,5,6\nB,7,8,9\n"


@pytest.mark.parametrize("text", [NUMERIC, UCI, UCI.replace("\n", "\r\n"), NUMERIC.rstrip()])
def test_both_formats_parse_to_the_same_rows(text):
    ds = parse_data(text, "f.txt")

    assert ds.x.dtype == np.float64 and ds.x.flags.c_contiguous
    assert ds.y.dtype == np.int64
    assert ds.x.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert ds.y.tolist() == [0, 2, 1]
    assert (ds.n_rows, ds.n_features) == (3, 3)


def test_bytes_and_str_inputs_agree():
    assert parse_data(NUMERIC.encode(), "f").y.tolist() == parse_data(NUMERIC, "f").y.tolist()


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1,2,3,0\n4,5,0\n", 2, "expected 4 fields, got 3"),
        ("1,2,3,0\n4,5,6,7,0\n", 2, "expected 4 fields, got 5"),
        ("A,1,2\nB,1\n", 2, "expected 3 fields, got 2"),
        ("1,2,3,0\n4,x,6,0\n", 2, "'x' is not an integer"),
        ("1,2,3,0\n4,5.5,6,0\n", 2, "'5.5' is not an integer"),
        ("1,2,3,0\n4,,6,0\n", 2, "'' is not an integer"),
        ("A,1,2\nB,1,2.0\n", 2, "'2.0' is not an integer"),
        ("1,2,3,0\n4,5,6,1.0\n", 2, "'1.0' is not an integer"),
        ("1,2,3,0\n4,5,6,-1\n", 2, "label -1 out of range"),
        ("1,2,3,0\nA,4,5,6\n", 2, "mixed formats"),
        ("A,1,2,3\n4,5,6,0\n", 2, "mixed formats"),
        ("A,1,2\nb,1,2\n", 2, "not a capital letter"),
        ("AB,1,2\n", 1, "not a capital letter"),
        ("1,2,3,0\n\n4,5,6,0\n", 2, "blank line"),
        ("7\n", 1, "at least 2 fields"),
    ],
)
def test_malformed_input_names_file_line_and_cause(text, line, fragment):
    with pytest.raises(DataError) as info:
        parse_data(text, "train_3.txt")

    message = str(info.value)
    assert message.startswith(f"train_3.txt line {line}: ")
    assert fragment in message
    assert info.value.line == line


@pytest.mark.parametrize("text", ["", "\n", "  \n\n", b""])
def test_empty_file_is_an_error(text):
    with pytest.raises(DataError, match=r"^f\.txt: empty file"):
        parse_data(text, "f.txt")


def test_label_range_is_checked_against_n_classes():
    parse_data("1,2,25\n", "f", n_classes=26)
    with pytest.raises(DataError, match=r"^f line 2: label 26 out of range \(must be in 0..25\)"):
        parse_data("1,2,25\n1,2,26\n", "f", n_classes=26)


def test_non_utf8_bytes_name_the_line():
    with pytest.raises(DataError, match=r"^f line 2: not UTF-8"):
        parse_data(b"1,2,0\n1,\xff,0\n", "f")


def test_read_data_file_names_the_basename(tmp_path):
    path = tmp_path / "train_7.txt"
    path.write_text("1,2,0\n1,2\n")

    with pytest.raises(DataError, match=r"^train_7\.txt line 2: expected 3 fields, got 2$"):
        read_data_file(path)
    with pytest.raises(DataError, match="cannot read file"):
        read_data_file(tmp_path / "missing.txt")


def _write_dir(root: Path, n_train: int, features: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    row = ",".join(["1"] * features)
    for i in range(1, n_train + 1):
        (root / f"train_letters{i}.txt").write_text(f"{row},{i % 3}\n{row},0\n")
    (root / "validate_letters.txt").write_text(f"{row},4\n")
    return root


def test_read_data_dir_sorts_shards_naturally_and_counts_classes(tmp_path):
    root = _write_dir(tmp_path / "d", 12)

    d = read_data_dir(root)

    names = [p.name for p, _ in d.train]
    assert names == [f"train_letters{i}.txt" for i in range(1, 13)]
    assert d.n_features == 2
    assert d.n_classes == 5  # max label (4, in validate) + 1
    assert d.validate.n_rows == 1


def test_read_data_dir_rejects_a_file_with_a_different_feature_count(tmp_path):
    root = _write_dir(tmp_path / "d", 3)
    (root / "train_letters2.txt").write_text("1,1,1,0\n")

    with pytest.raises(DataError, match=r"^train_letters2\.txt line 1: 3 features, but "):
        read_data_dir(root)


def test_read_data_dir_needs_exactly_one_validation_file(tmp_path):
    root = _write_dir(tmp_path / "d", 2)
    (root / "validate_more.txt").write_text("1,1,0\n")
    with pytest.raises(DataError, match="exactly one validate"):
        read_data_dir(root)
    (root / "validate_more.txt").unlink()
    (root / "validate_letters.txt").unlink()
    with pytest.raises(DataError, match="exactly one validate"):
        read_data_dir(root)


def test_read_data_dir_needs_training_files(tmp_path):
    (tmp_path / "validate_letters.txt").write_text("1,0\n")
    with pytest.raises(DataError, match="no training files"):
        read_data_dir(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        read_data_dir(tmp_path / "nope")


def test_read_data_dir_reports_a_bad_shard_by_name(tmp_path):
    root = _write_dir(tmp_path / "d", 3)
    (root / "train_letters3.txt").write_text("1,1,0\n1,q,0\n")

    with pytest.raises(DataError, match=r"^train_letters3\.txt line 2: field 2"):
        read_data_dir(root)


def test_a_million_rows_parse_in_seconds():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 16, (1_000_000, 17))
    text = "\n".join(",".join(map(str, r)) for r in table[:1000].tolist()) + "\n"
    text = text * 1000

    start = time.perf_counter()
    ds = parse_data(text, "big.txt")
    elapsed = time.perf_counter() - start

    assert ds.n_rows == 1_000_000
    assert ds.y[:1000].tolist() == table[:1000, -1].tolist()
    assert elapsed < 15.0, f"parsing 1,000,000 rows took {elapsed:.1f} s"
