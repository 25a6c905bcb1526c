"""letters: non-IID shards (--dirichlet label skew, --shard-sizes quantity skew).

The default letters data is the source: its 16,000 training rows are balanced over 26 classes
and in random order, so every property below can be seen on it in well under a second.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import letters
from letters.__main__ import cli
from letters.generator import generate, generate_dataset, generate_labels
from letters.partition import (
    EQUAL,
    SizeSpec,
    _fill_empty_shards,
    dirichlet_assignment,
    label_entropy_bits,
    parse_size_spec,
    partition_rng,
    plan_shards,
    sizes_from_weights,
)
from letters.split import split_file
from mlcore.data import read_data_dir

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"train_letters{i}.txt" for i in range(1, 17)] + ["validate_letters.txt"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The default dataset as one file, in its order (16,000 training rows, then 4,000)."""
    path = tmp_path_factory.mktemp("src") / "letters.data"
    d = letters.default_data_dir()
    path.write_bytes(b"".join((d / name).read_bytes() for name in NAMES))
    return path


def split(source: Path, out: Path, *options: str) -> Path:
    result = CliRunner().invoke(cli, ["split", str(source), str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def shard_lines(out: Path) -> list[list[str]]:
    n = len(list(out.glob("train_*.txt")))
    return [(out / f"train_letters{k}.txt").read_text().splitlines() for k in range(1, n + 1)]


def label_counts(out: Path) -> np.ndarray:
    d = read_data_dir(out)
    return np.array([np.bincount(ds.y, minlength=26) for _, ds in d.train])


def mean_entropy(out: Path) -> float:
    return float(np.mean([label_entropy_bits(c) for c in label_counts(out)]))


# --- without the options nothing changes -------------------------------------------------


def test_split_without_the_options_gives_todays_bytes(source, tmp_path):
    plain = split(source, tmp_path / "plain")
    seeded = split(source, tmp_path / "seeded", "--seed", "7", "--shard-sizes", "equal")
    unit = split(source, tmp_path / "unit", "--shard-sizes", ",".join(["1"] * 16))

    committed = letters.default_data_dir()
    for name in NAMES:
        want = (committed / name).read_bytes()
        assert (plain / name).read_bytes() == want, name
        assert (seeded / name).read_bytes() == want, name
        assert (unit / name).read_bytes() == want, name


def test_plan_without_skew_is_the_seed_layout_and_draws_nothing():
    plan = plan_shards(12, 3, 2, seed=99)

    assert plan.sizes == [4, 3, 3] and plan.assignment is None


# --- label skew ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_shards(source, tmp_path):
    a = split(source, tmp_path / "a", "--dirichlet", "0.5", "--seed", "3")
    b = split(source, tmp_path / "b", "--dirichlet", "0.5", "--seed", "3")
    c = split(source, tmp_path / "c", "--dirichlet", "0.5", "--seed", "4")

    for name in NAMES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert shard_lines(a) != shard_lines(c)


def test_every_training_row_lands_in_exactly_one_shard_and_validation_stays(source, tmp_path):
    committed = letters.default_data_dir()
    training = Counter(
        line for name in NAMES[:-1] for line in (committed / name).read_text().splitlines()
    )
    for options in (["--dirichlet", "0.1"], ["--shard-sizes", "lognormal:1.5"],
                    ["--dirichlet", "0.3", "--shard-sizes", "4,2,1,1,1,1,1,1,1,1,1,1,1,1,1,1"]):
        out = split(source, tmp_path / "_".join(options).replace(",", ""), *options)

        lines = [line for shard in shard_lines(out) for line in shard]
        assert Counter(lines) == training, options
        assert len(lines) == 16_000 and all(shard_lines(out)), options
        valid = (out / "validate_letters.txt").read_bytes()
        assert valid == (committed / "validate_letters.txt").read_bytes(), options


def test_rows_keep_file_order_inside_a_shard(source, tmp_path):
    out = split(source, tmp_path / "o", "--dirichlet", "0.5")
    rows = source.read_text().splitlines()[:16_000]
    once = {line for line, n in Counter(rows).items() if n == 1}  # rows that say where they were
    position = {line: i for i, line in enumerate(rows) if line in once}

    for shard in shard_lines(out):
        seen = [position[line] for line in shard if line in once]
        assert len(seen) > len(shard) // 2 and seen == sorted(seen)


def test_label_skew_grows_as_alpha_shrinks(source, tmp_path):
    iid = mean_entropy(split(source, tmp_path / "iid"))
    half = mean_entropy(split(source, tmp_path / "half", "--dirichlet", "0.5"))
    tenth = mean_entropy(split(source, tmp_path / "tenth", "--dirichlet", "0.1"))
    near_iid = mean_entropy(split(source, tmp_path / "big", "--dirichlet", "1000"))

    assert tenth < half < near_iid <= iid + 1e-9
    assert iid > 4.69 and near_iid > 4.6  # log2(26) = 4.70
    assert tenth < 3.0 < half < 4.3


def test_skew_ordering_holds_for_every_seed(source):
    y = np.loadtxt(source, delimiter=",", dtype=np.int64, usecols=16)[:16_000]
    w = np.full(16, 1 / 16)
    for seed in range(1, 6):
        entropies = {}
        for alpha in (0.1, 0.5, 5.0):
            shard = dirichlet_assignment(y, 16, alpha, w, partition_rng(seed))
            counts = np.zeros((16, 26), dtype=np.int64)
            np.add.at(counts, (shard, y), 1)
            entropies[alpha] = np.mean([label_entropy_bits(c) for c in counts])
        assert entropies[0.1] < entropies[0.5] < entropies[5.0], (seed, entropies)


def test_the_split_is_the_documented_recipe(source):
    """An independent computation of the module docstring's recipe, from the same seed."""
    y = np.loadtxt(source, delimiter=",", dtype=np.int64, usecols=16)[:16_000]
    weights = np.array([4.0, 2.0] + [1.0] * 14)
    weights /= weights.sum()

    got = plan_shards(20_000, 16, 4_000, alpha=0.5, sizes=SizeSpec("weights", weights=tuple(
        [4.0, 2.0] + [1.0] * 14)), seed=11, train_labels=y).assignment

    rng = np.random.default_rng(np.random.SeedSequence([11, 0x6E6F6E2D696964]))
    want = np.full(len(y), -1)
    for c in range(26):
        p = rng.dirichlet(0.5 * 16 * weights)
        rows = [int(r) for r in rng.permutation(np.flatnonzero(y == c))]
        start = 0
        for k in range(16):
            end = len(rows) if k == 15 else int(round(sum(p[: k + 1]) / sum(p) * len(rows)))
            for r in rows[start:end]:
                want[r] = k
            start = max(start, end)
    assert (want >= 0).all()
    assert np.array_equal(got, want)


def test_an_empty_shard_takes_the_last_row_of_the_largest():
    shard = np.array([0, 0, 0, 2, 0, 2, 0])  # shard 1 and 3 empty; 0 is the largest

    _fill_empty_shards(shard, 4)

    assert shard.tolist() == [0, 0, 0, 2, 3, 2, 1]


def test_every_shard_is_non_empty_even_when_the_draws_leave_some_empty():
    y = np.repeat([0, 1], 20)  # 2 classes, 40 rows, 12 shards, extreme skew
    for seed in range(1, 20):
        shard = dirichlet_assignment(y, 12, 0.01, np.full(12, 1 / 12), partition_rng(seed))
        counts = np.bincount(shard, minlength=12)
        assert counts.min() >= 1 and counts.sum() == 40


def test_generate_with_skew_equals_splitting_what_generate_wrote(tmp_path):
    options = dict(n_samples=2_500, n_shards=6, n_validate=400, seed=5)
    generate_dataset(tmp_path / "plain", **options)
    generate_dataset(tmp_path / "skewed", **options, dirichlet=0.2, sizes=parse_size_spec(
        "lognormal:1"))
    whole = tmp_path / "whole.txt"
    names = [f"train_letters{k}.txt" for k in range(1, 7)] + ["validate_letters.txt"]
    whole.write_bytes(b"".join((tmp_path / "plain" / n).read_bytes() for n in names))

    split_file(whole, tmp_path / "split", 6, 400, dirichlet=0.2,
               sizes=parse_size_spec("lognormal:1"), seed=5)

    for name in names:
        assert (tmp_path / "skewed" / name).read_bytes() == (
            tmp_path / "split" / name).read_bytes(), name


def test_generate_labels_are_the_generated_rows_labels():
    _, y = generate(8, 2_345)

    assert np.array_equal(generate_labels(8, 2_345), y)


# --- quantity skew ------------------------------------------------------------------------


def test_explicit_relative_sizes_are_exact(source, tmp_path):
    weights = [12, 4, 2, 2] + [1] * 12  # 32 parts of 500 rows
    out = split(source, tmp_path / "w", "--shard-sizes", ",".join(map(str, weights)))

    sizes = [len(s) for s in shard_lines(out)]
    assert sizes == [6000, 2000, 1000, 1000] + [500] * 12
    # In order, as without the option: the shards are the training rows cut at those sizes.
    rows = source.read_text().splitlines()
    assert shard_lines(out)[1] == rows[6000:8000]


def test_lognormal_sizes_follow_sigma(source, tmp_path):
    spreads = []
    for sigma in ("0.25", "1", "2"):
        out = split(source, tmp_path / sigma, "--shard-sizes", f"lognormal:{sigma}")
        sizes = np.array([len(s) for s in shard_lines(out)])
        rng = np.random.default_rng(np.random.SeedSequence([1, 0x6E6F6E2D696964]))
        draw = rng.lognormal(0.0, float(sigma), 16)
        assert sizes.sum() == 16_000 and sizes.min() >= 1
        assert np.abs(sizes - 16_000 * draw / draw.sum()).max() <= 1
        spreads.append(sizes.max() / sizes.min())
    assert spreads[0] < spreads[1] < spreads[2]


def test_with_dirichlet_the_sizes_follow_the_skew_on_average(source):
    y = np.loadtxt(source, delimiter=",", dtype=np.int64, usecols=16)[:16_000]
    weights = np.array([4.0, 2.0] + [1.0] * 14)
    weights /= weights.sum()
    total = np.zeros(16)
    for seed in range(1, 11):
        shard = dirichlet_assignment(y, 16, 1.0, weights, partition_rng(seed))
        total += np.bincount(shard, minlength=16)

    share = total / total.sum()
    np.testing.assert_allclose(share, weights, rtol=0.2)


def test_sizes_from_weights_rounds_by_largest_remainder_and_fills_zeros():
    assert sizes_from_weights(10, np.array([1.0, 1.0, 1.0])) == [4, 3, 3]
    assert sizes_from_weights(10, np.array([1.0, 2.0, 2.0])) == [2, 4, 4]
    assert sizes_from_weights(4, np.array([1e-9, 1.0, 1e-9, 1e-9])) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("text", "want"),
    [("equal", EQUAL), ("lognormal:0.5", SizeSpec("lognormal", sigma=0.5)),
     ("3,1", SizeSpec("weights", weights=(3.0, 1.0)))],
)
def test_shard_size_specs_parse(text, want):
    assert parse_size_spec(text) == want
    assert parse_size_spec(str(want)) == want


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--shard-sizes", "1,2"], "names 2 relative sizes for 16 shards"),
        (["--shard-sizes", "lognormal:nan"], "must be a finite number"),
        (["--shard-sizes", "1,0,1"], "must be > 0"),
        (["--shard-sizes", "zipf:2"], "'zipf:2' is not a number"),
        (["--dirichlet", "0"], "Invalid value for '--dirichlet'"),
        (["--dirichlet", "inf"], "finite"),
    ],
)
def test_bad_options_are_one_line(source, tmp_path, args, fragment):
    proc = subprocess.run(
        [sys.executable, "-m", "letters", "split", str(source), str(tmp_path / "o"), *args],
        capture_output=True, text=True, cwd=REPO,
    )

    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# --- stats ---------------------------------------------------------------------------------


def test_stats_reports_the_label_skew_per_shard(source, tmp_path):
    out = split(source, tmp_path / "s", "--dirichlet", "0.1")

    skewed = CliRunner().invoke(cli, ["stats", str(out)]).output
    plain = CliRunner().invoke(cli, ["stats", str(letters.default_data_dir())]).output

    assert "train_letters16.txt" in skewed and "label skew: mean shard entropy" in skewed
    assert "mean shard entropy 4.70 bits" in plain
    reported = float(skewed.split("mean shard entropy ")[1].split()[0])
    assert reported == pytest.approx(mean_entropy(out), abs=0.005)


# --- scripts/experiment_noniid.py -----------------------------------------------------------


@pytest.mark.slow
def test_the_comparison_script_runs_every_setting_and_writes_its_files(tmp_path):
    """Tiny settings through real processes: the split, the cluster, the client, the files."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiment_noniid.py"), "--out",
         str(tmp_path / "out"), "--alphas", "0.1,iid", "--strategies", "fedavg,fedprox,fedadam",
         "--rounds", "2", "--epochs", "1", "--hidden", "16", "--server-lr", "0.05",
         "--prox-mu", "0.5", "--seeds", "1,2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    with open(out / "runs.csv", newline="") as file:
        runs = {(r["alpha"], r["strategy"], r["seed"]): r for r in csv.DictReader(file)}
    assert set(runs) == {(a, s, seed) for a in ("0.1", "iid")
                         for s in ("fedavg", "fedprox", "fedadam") for seed in ("1", "2")}
    for run in runs.values():
        assert run["failure"] == "" and run["rounds_done"] == "2"
        assert 0 < float(run["final_error"]) < 1
    assert float(runs[("0.1", "fedavg", "1")]["mean_shard_entropy_bits"]) < 3.0
    assert float(runs[("iid", "fedavg", "1")]["mean_shard_entropy_bits"]) > 4.69
    # Each strategy is a different run; each seed another start.
    finals = {key: run["final_error"] for key, run in runs.items()}
    assert len({finals[("iid", s, "1")] for s in ("fedavg", "fedprox", "fedadam")}) == 3
    assert finals[("iid", "fedavg", "1")] != finals[("iid", "fedavg", "2")]
    # The IID split of the built-in data is the built-in data, byte for byte.
    for name in NAMES:
        assert (out / "data" / "alpha-iid" / name).read_bytes() == (
            letters.default_data_dir() / name).read_bytes()
    with open(out / "rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    assert len(rounds) == 24
    assert rounds[1]["validation_error"] == finals[("0.1", "fedavg", "1")]
    report = (out / "report.md").read_text()
    assert "| alpha = 0.1 | " in report and "| IID | 4.70 bits | 26.0 | 1,000-1,000 |" in report
    assert "FedAdam (server lr 0.05)" in report and "FedProx (mu = 0.5)" in report
    mean = 100 * (float(finals[("iid", "fedavg", "1")]) + float(finals[("iid", "fedavg", "2")])) / 2
    assert f"| IID | 4.70 bits | 26.0 | 1,000-1,000 | {mean:.2f}% (" in report
    assert (out / "experiment_noniid.png").read_bytes().startswith(b"\x89PNG")
    headline = dict(p.split("=", 1) for p in done.stdout.strip().splitlines()[-1].split())
    assert headline["failed_runs"] == "0" and headline["seeds"] == "2"
    assert float(headline["fedavg_iid"]) == pytest.approx(mean / 100, abs=1e-4)
