"""letters: attributes, seeded generation, the default dataset, splitter, stats and CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import letters
from letters.__main__ import cli
from letters.attributes import raw_attributes, scale_attributes
from letters.generator import BLOCK, generate, generate_dataset
from letters.layout import shard_sizes
from mlcore.data import read_data_dir, read_data_file

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "letter-recognition.data"
needs_real = pytest.mark.needs(REAL.is_file(), f"real UCI data absent at {REAL}")


def bitmap(size: int, pixels: list[tuple[int, int]]) -> np.ndarray:
    """A (1, size, size) image with on pixels at (x from left, y from bottom)."""
    img = np.zeros((1, size, size), dtype=bool)
    for x, y in pixels:
        img[0, size - 1 - y, x] = True
    return img


def reference_attributes(img: np.ndarray) -> list[float]:
    """The 16 attributes by loops straight from the definitions (the oracle)."""
    h, w = img.shape
    on = [(x, h - 1 - r) for r in range(h) for x in range(w) if img[r, x]]
    xs, ys = [p[0] for p in on], [p[1] for p in on]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    wd, ht = x1 - x0 + 1, y1 - y0 + 1
    xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
    u = [(x - xc) / wd for x in xs]
    v = [(y - yc) / ht for y in ys]
    n = len(on)
    mu, mv = sum(u) / n, sum(v) / n
    cu, cv = [a - mu for a in u], [b - mv for b in v]

    def mean(values):
        return sum(values) / n

    def pix(x, y):
        return 0 <= x < w and 0 <= y < h and bool(img[h - 1 - y, x])

    x_edges = [(x, y) for x, y in on if not pix(x - 1, y)]
    y_edges = [(x, y) for x, y in on if not pix(x, y - 1)]
    return [
        xc, yc, wd, ht, n, mu, mv,
        mean([a * a for a in cu]), mean([b * b for b in cv]),
        mean([a * b for a, b in zip(cu, cv, strict=True)]),
        mean([a * a * b for a, b in zip(cu, cv, strict=True)]),
        mean([a * b * b for a, b in zip(cu, cv, strict=True)]),
        len(x_edges) / ht, sum((y - yc) / ht for _, y in x_edges) / ht,
        len(y_edges) / wd, sum((x - xc) / wd for x, _ in y_edges) / wd,
    ]  # fmt: skip


def test_vertical_bar_has_known_attributes():
    img = bitmap(5, [(1, 0), (1, 1), (1, 2)])

    a = raw_attributes(img)[0]

    expected = [1, 1, 1, 3, 3, 0, 0, 0, 2 / 27, 0, 0, 0, 1, 0, 1, 0]
    np.testing.assert_allclose(a, expected, atol=1e-12)


def test_two_bars_count_two_edges_per_row():
    # Two vertical bars at x=0 and x=3 in rows y=1..2: scanning left to right meets 2 edges
    # per row; scanning bottom to top meets 1 edge in each of the 2 occupied columns of 4.
    img = bitmap(6, [(0, 1), (0, 2), (3, 1), (3, 2)])

    a = raw_attributes(img)[0]

    assert (a[0], a[1], a[2], a[3], a[4]) == (1.5, 1.5, 4, 2, 4)
    assert a[12] == pytest.approx(2.0)  # x-ege: 4 edges over 2 rows
    assert a[14] == pytest.approx(0.5)  # y-ege: 2 edges over a box 4 wide
    assert a[5] == pytest.approx(0.0) and a[6] == pytest.approx(0.0)
    assert a[7] == pytest.approx(0.375**2)  # x2bar: u = +-1.5/4


def test_l_shape_moments_match_hand_computation():
    img = bitmap(4, [(0, 0), (1, 0), (2, 0), (0, 1), (0, 2)])

    a = raw_attributes(img)[0]

    assert a[5] == pytest.approx(-2 / 15) and a[6] == pytest.approx(-2 / 15)
    assert a[7] == pytest.approx(16 / 225) and a[8] == pytest.approx(16 / 225)
    assert a[9] == pytest.approx(-1 / 25)
    assert a[10] == pytest.approx(-105 / 16875)


def test_vectorised_attributes_agree_with_the_loop_oracle():
    rng = np.random.default_rng(7)
    imgs = rng.random((20, 9, 11)) < 0.3
    imgs[:, 4, 5] = True  # never empty

    got = raw_attributes(imgs)

    for img, row in zip(imgs, got, strict=True):
        np.testing.assert_allclose(row, reference_attributes(img), atol=1e-12)


def test_empty_image_gives_zeros_and_scaling_stays_in_range():
    raw = raw_attributes(np.zeros((1, 8, 8), dtype=bool))
    assert raw.tolist() == [[0.0] * 16]

    scaled = scale_attributes(np.array([[-1e9] * 16, [1e9] * 16]))
    assert scaled.dtype == np.int64
    assert scaled.tolist() == [[0] * 16, [15] * 16]


def test_same_seed_same_rows_different_seed_different_rows():
    x1, y1 = generate(5, 300)
    x2, y2 = generate(5, 300)
    x3, _ = generate(6, 300)

    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.min() >= 0 and x1.max() <= 15 and x1.shape == (300, 16)


def test_rows_do_not_depend_on_how_many_are_asked_for():
    short_x, short_y = generate(3, 100)
    long_x, long_y = generate(3, BLOCK + 100)

    assert np.array_equal(long_x[:100], short_x) and np.array_equal(long_y[:100], short_y)


def test_classes_are_balanced():
    _, y = generate(2, 26 * 50)

    assert np.bincount(y, minlength=26).tolist() == [50] * 26
    for start in range(0, 1300 - 500, 97):  # any run of rows is balanced within 2 per class
        counts = np.bincount(y[start : start + 500], minlength=26)
        assert counts.max() - counts.min() <= 2


def test_output_bytes_do_not_depend_on_the_shard_count(tmp_path):
    generate_dataset(tmp_path / "a", n_samples=1200, n_shards=4, n_validate=200, seed=9)
    generate_dataset(tmp_path / "b", n_samples=1200, n_shards=7, n_validate=200, seed=9)

    def all_rows(d: Path) -> str:
        parts = sorted(d.glob("train_*.txt"), key=lambda p: int(p.stem[len("train_letters") :]))
        return "".join(p.read_text() for p in [*parts, d / "validate_letters.txt"])

    assert all_rows(tmp_path / "a") == all_rows(tmp_path / "b")
    assert len(list((tmp_path / "b").glob("train_*.txt"))) == 7


def test_committed_default_dataset_equals_a_fresh_generation(tmp_path):
    committed = letters.default_data_dir()
    names = [f"train_letters{i}.txt" for i in range(1, 17)] + ["validate_letters.txt"]
    assert sorted(p.name for p in committed.glob("*.txt")) == sorted(names)

    generate_dataset(
        tmp_path,
        n_samples=letters.DEFAULT_SAMPLES,
        n_shards=letters.DEFAULT_SHARDS,
        n_validate=letters.DEFAULT_VALIDATE,
    )

    for name in names:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
    d = read_data_dir(committed)
    assert [ds.n_rows for _, ds in d.train] == [1000] * 16 and d.validate.n_rows == 4000
    assert (d.n_features, d.n_classes) == (16, 26)


def test_shard_sizes_give_the_remainder_to_the_first_shards():
    assert shard_sizes(20_000, 16, 4_000) == [1000] * 16
    assert shard_sizes(12, 3, 2) == [4, 3, 3]
    with pytest.raises(ValueError, match="not enough for 3 shards"):
        shard_sizes(4, 3, 2)


UCI_ROWS = [f"{chr(65 + i % 26)},{i % 16},{(i * 7) % 16},3" for i in range(12)]
NUMERIC_ROWS = [f"{i % 16},{(i * 7) % 16},3,{i % 26}" for i in range(12)]


@pytest.mark.parametrize("rows", [UCI_ROWS, NUMERIC_ROWS], ids=["uci", "numeric"])
def test_split_converts_either_format_into_the_layout(tmp_path, rows):
    src = tmp_path / "src.data"
    src.write_text("\n".join(rows) + "\n")

    result = CliRunner().invoke(
        cli, ["split", str(src), str(tmp_path / "out"), "--shards", "3", "--validate", "2"]
    )

    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    sizes = [len(read_data_file(out / f"train_letters{i}.txt").y) for i in (1, 2, 3)]
    assert sizes == [4, 3, 3]
    text = "".join((out / f"train_letters{i}.txt").read_text() for i in (1, 2, 3))
    text += (out / "validate_letters.txt").read_text()
    assert text == "".join(f"{i % 16},{(i * 7) % 16},3,{i % 26}\n" for i in range(12))


@needs_real
def test_split_of_the_real_file_is_the_classic_16000_4000(tmp_path):
    result = CliRunner().invoke(cli, ["split", str(REAL), str(tmp_path)])

    assert result.exit_code == 0, result.output
    d = read_data_dir(tmp_path)
    assert [ds.n_rows for _, ds in d.train] == [1000] * 16
    first = REAL.read_text().splitlines()[0].split(",")
    assert d.train[0][1].y[0] == ord(first[0]) - ord("A")
    assert d.train[0][1].x[0].tolist() == [float(v) for v in first[1:]]
    last = REAL.read_text().splitlines()[-1].split(",")
    assert d.validate.y[-1] == ord(last[0]) - ord("A")


def test_stats_prints_attributes_and_class_counts(tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("\n".join(NUMERIC_ROWS) + "\n")

    result = CliRunner().invoke(cli, ["stats", str(src)])

    assert result.exit_code == 0, result.output
    assert "12 rows, 3 attributes" in result.output
    assert "f1" in result.output and "A=1" in result.output and "L=1" in result.output


def test_stats_of_the_default_dataset_uses_attribute_names():
    result = CliRunner().invoke(cli, ["stats", str(letters.default_data_dir())])

    assert result.exit_code == 0, result.output
    assert "20,000 rows, 16 attributes, 17 file(s)" in result.output
    assert "x2ybr" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["split", "{bad}", "{out}"], "bad.txt line 2: expected 3 fields, got 2"),
        (["split", "{good}", "{out}", "--shards", "16", "--validate", "4"], "not enough"),
        (["stats", "{bad}"], "bad.txt line 2"),
        (["stats", "{missing}"], "does not exist"),
        (["generate", "{out}", "--samples", "10", "--validate", "20"], "not enough"),
        (["generate", "{out}", "--samples", "0"], "Invalid value"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(tmp_path, args, fragment):
    (tmp_path / "bad.txt").write_text("1,2,0\n1,2\n")
    (tmp_path / "good.txt").write_text("1,2,0\n" * 6)
    paths = {
        "bad": tmp_path / "bad.txt",
        "good": tmp_path / "good.txt",
        "missing": tmp_path / "missing.txt",
        "out": tmp_path / "out",
    }
    argv = [a.format(**paths) for a in args]

    proc = subprocess.run(
        [sys.executable, "-m", "letters", *argv], capture_output=True, text=True, cwd=REPO
    )

    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_refuses_to_mix_with_an_existing_dataset(tmp_path):
    runner = CliRunner()
    args = ["generate", str(tmp_path), "--samples", "60", "--shards", "2", "--validate", "10"]
    assert runner.invoke(cli, args).exit_code == 0
    (tmp_path / "train_letters9.txt").write_text("stale\n")

    refused = runner.invoke(cli, args)
    replaced = runner.invoke(cli, [*args, "--overwrite"])

    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert replaced.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train_letters1.txt", "train_letters2.txt", "validate_letters.txt"
    ]  # fmt: skip
