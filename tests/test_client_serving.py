"""The client's serving commands: model files from training, ensembles of the last round's
shard models, `client predict` and `client evaluate` through a real cluster.

Unit tests read rows and build ensembles in process; the end-to-end tests start a real
coordinator and nodes on loopback (tests/harness.py), train with the real client command,
and compare what the cluster answers with mlcore.servable in this process, bit for bit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.dataset import ClassNamesError, class_names_for
from client.rows import RowError, parse_rows
from client.training import RunConfig, run_rounds, shard_refs
from harness import REPO, LocalCluster
from idl.gen.ttypes import RoundRequest, RoundResult, TaskRecord, TaskResult, TaskTimings
from idl.tensors import encode_tensors
from mlcore.checkpoint import load_model, save_model
from mlcore.data import read_data_dir
from mlcore.model import init_params
from mlcore.servable import load_servable

LETTERS = REPO / "letters" / "data"
LETTER_NAMES = [chr(c) for c in range(ord("A"), ord("Z") + 1)]


# ------------------------------------------------------------------------- rows to predict


def test_rows_without_a_label_column_are_read_as_attributes() -> None:
    rows = parse_rows("1,2,3\n4,5.5,6\n", "rows.csv", 3)

    assert rows.x.tolist() == [[1, 2, 3], [4, 5.5, 6]]
    assert not rows.layout.label_last and not rows.layout.letter_first


def test_a_label_column_is_recognised_by_the_width_and_left_out() -> None:
    rows = parse_rows("1,2,3,7\n4,5,6,0\n", "rows.csv", 3)

    assert rows.x.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert rows.layout.label_last


def test_uci_rows_drop_the_letter() -> None:
    rows = parse_rows("T,1,2,3\nA,4,5,6\n", "letters.data", 3)

    assert rows.x.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert rows.layout.letter_first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n4,5\n", "rows.csv line 2: expected 3 fields (3 attributes, as line 1), got 2"),
        ("1,2,3\n4,x,6\n7,8,9\n", "rows.csv line 2: field 2: 'x' is not a number"),
        ("1,2,3\n4,5,nan\n", "rows.csv line 2: field 3: 'nan' is not a number"),
        ("1,2,3,4\n1,2,3\n", "rows.csv line 2: expected 4 fields (3 attributes and a label, "
                             "as line 1), got 3"),
        ("1,2\n", "rows.csv line 1: expected 3 fields (the model's attributes) or 4 "
                  "(attributes and a label), got 2"),
        ("1,2,3\n\n4,5,6\n", "rows.csv line 2: blank line (one row per line)"),
        ("T,1,2,3\n1,2,3,4\n", "rows.csv line 2: field 1: '1' is not a letter"),
        ("", "rows.csv: no rows (empty file)"),
    ],
)
def test_a_bad_row_is_refused_naming_its_line(text: str, message: str) -> None:
    with pytest.raises(RowError) as caught:
        parse_rows(text, "rows.csv", 3)

    assert str(caught.value).startswith(message)


# ------------------------------------------------------------------------- class names


def test_letters_data_gets_letter_names_and_other_data_numbers(tmp_path: Path) -> None:
    letters = read_data_dir(LETTERS)
    numbers = tmp_path / "numbers"
    numbers.mkdir()
    for name in ("train_1.txt", "validate_v.txt"):
        (numbers / name).write_text("1,2,0\n3,4,2\n")
    small = read_data_dir(numbers)

    assert list(class_names_for(LETTERS, letters)) == LETTER_NAMES
    assert class_names_for(numbers, small) == ("0", "1", "2")
    assert class_names_for(numbers, small, "cat,dog,eel") == ("cat", "dog", "eel")
    assert class_names_for(LETTERS, letters, "numbers")[25] == "25"
    with pytest.raises(ClassNamesError, match="2 names, the data has 3 classes"):
        class_names_for(numbers, small, "cat,dog")


def test_uci_format_data_gets_letter_names(tmp_path: Path) -> None:
    data = tmp_path / "uci"
    data.mkdir()
    lines = "".join(f"{letter},1,2\n" for letter in LETTER_NAMES)
    (data / "train_1.txt").write_text(lines)
    (data / "validate_1.txt").write_text(lines)

    assert list(class_names_for(data, read_data_dir(data))) == LETTER_NAMES


# ------------------------------------------------------------------------- ensembles


class FakeLink:
    """Answers each round with deltas made from the round number and the shard index."""

    def run_round(self, request: RoundRequest) -> RoundResult:
        shapes = [tuple(t.shape) for t in request.weights]
        results, records = [], []
        for i, ref in enumerate(request.shards):
            rng = np.random.default_rng(1000 * request.round + i)
            delta = [rng.normal(scale=0.01, size=s) for s in shapes]
            timings = TaskTimings(0.0, 0.01, 0.0, 0.01)
            results.append(TaskResult(delta=encode_tensors(delta), n_samples=ref.n_rows,
                                      train_loss=0.5, train_error=0.5, timings=timings))
            records.append(TaskRecord(shard_index=i, shard=ref.name, node="fake", attempts=1,
                                      failures=[], timings=timings, start_s=0.0, end_s=0.01,
                                      n_samples=ref.n_rows, train_loss=0.5, train_error=0.5))
        return RoundResult(results=results, records=records, wall_s=0.01, coordinator="fake",
                           policy="round-robin")

    def close(self) -> None:
        pass


def _config(tmp_path: Path, rounds: int, **outputs: Path) -> RunConfig:
    return RunConfig(data_dir=LETTERS, rounds=rounds, epochs=1, hidden=8, eta=1e-3,
                     standardize=True, timing_path=tmp_path / f"timing{rounds}.txt", **outputs)


def test_ensemble_members_are_the_last_weights_plus_each_shards_delta(tmp_path: Path) -> None:
    one_round = run_rounds(_config(tmp_path, 1), lambda paths: FakeLink())
    summary = run_rounds(_config(tmp_path, 2, ensemble_out=tmp_path / "ens.npz",
                                 model_out=tmp_path / "model.npz"), lambda paths: FakeLink())
    request = RoundRequest(round=2, weights=encode_tensors(one_round.params.tensors()),
                           shards=shard_refs(read_data_dir(LETTERS))[0])
    deltas = [[np.frombuffer(t.data).reshape(t.shape) for t in r.delta]
              for r in FakeLink().run_round(request).results]

    ensemble = load_servable(tmp_path / "ens.npz")
    model = load_servable(tmp_path / "model.npz")

    assert len(ensemble.members) == 16
    for member, delta in zip(ensemble.members, deltas, strict=True):
        expected = [base + step for base, step in
                    zip(one_round.params.tensors(), delta, strict=True)]
        for got, want in zip(member.tensors(), expected, strict=True):
            assert np.array_equal(got, want) and got.tobytes() == want.tobytes()
    assert list(ensemble.class_names) == LETTER_NAMES == list(model.class_names)
    assert ensemble.standardization == model.standardization is not None
    assert ensemble.meta["kind"] == "ensemble" and model.meta["kind"] == "fedavg"
    assert ensemble.meta["validation_error"] == summary.ensemble_error
    letters = read_data_dir(LETTERS)
    assert ensemble.score(letters.validate.x, letters.validate.y).error == summary.ensemble_error
    assert model.meta["validation_error"] == summary.validation_error


def test_a_model_file_from_before_class_names_still_loads(tmp_path: Path) -> None:
    params = init_params(16, 4, 26, seed=3)
    save_model(tmp_path / "old.npz", params, {"round": 3, "standardization": None})

    servable = load_servable(tmp_path / "old.npz")
    written = load_model(tmp_path / "old.npz")[0]

    assert servable.names() == tuple(str(i) for i in range(26))
    assert all(np.array_equal(a, b) for a, b in
               zip(servable.members[0].tensors(), written.tensors(), strict=True))


# ------------------------------------------------------------------------- end to end


def client(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("serving-cluster")) as running:
        running.add_node()
        running.add_node()
        running.add_coordinator("round-robin")
        yield running


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A letters model and its ensemble, trained by the real client on the real cluster."""
    out = tmp_path_factory.mktemp("trained")
    address = cluster.coordinator.address
    done = client(address.host, str(address.port), "letters", "3", "5", "32", "0.003",
                  "--batch-size", "64", "--momentum", "0.9", "--init", "he", "--standardize",
                  "--timing", str(out / "timing.txt"), "--model-out", str(out / "model.npz"),
                  "--ensemble-out", str(out / "ensemble.npz"))
    assert done.returncode == 0, done.stderr
    assert "ensemble of the last round's shard models: validation error" in done.stdout
    return {"model": out / "model.npz", "ensemble": out / "ensemble.npz"}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model", "ensemble"])
def test_predict_through_the_cluster_prints_the_in_process_labels(
        cluster: LocalCluster, trained: dict[str, Path], tmp_path: Path, which: str) -> None:
    servable = load_servable(trained[which])
    validate = LETTERS / "validate_letters.txt"
    x = read_data_dir(LETTERS).validate.x

    done = client("predict", str(cluster.coordinator.address), str(trained[which]),
                  str(validate), "--chunk-rows", "1500")

    assert done.returncode == 0, done.stderr
    expected = [LETTER_NAMES[i] for i in servable.predict(x)]
    assert done.stdout.splitlines() == expected


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model", "ensemble"])
def test_predict_probabilities_equal_the_in_process_ones_bit_for_bit(
        cluster: LocalCluster, trained: dict[str, Path], tmp_path: Path, which: str) -> None:
    servable = load_servable(trained[which])
    rows = tmp_path / "rows.csv"  # attributes only, no label column
    x = read_data_dir(LETTERS).validate.x[:700]
    rows.write_text("".join(",".join(str(int(v)) for v in r) + "\n" for r in x))
    out = tmp_path / "proba.csv"

    done = client("predict", str(cluster.coordinator.address), str(trained[which]), str(rows),
                  "--proba", "--out", str(out), "--chunk-rows", "256")

    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(["label", *LETTER_NAMES])
    got = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    want = servable.predict_proba(x)
    assert got.tobytes() == want.tobytes()
    assert [line.split(",")[0] for line in lines[1:]] == [
        LETTER_NAMES[i] for i in servable.predict(x)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,0\n1,2,3\n", "rows.csv line 2: expected 16"),
        ("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,0\n" * 3 + "1,2,3,4,5,6,7,8,9,10,11,x,13,14,15,0\n",
         "rows.csv line 4: field 12: 'x' is not a number"),
    ],
)
def test_a_bad_row_is_one_line_naming_it_and_a_failure(
        cluster: LocalCluster, trained: dict[str, Path], tmp_path: Path, content: str,
        fragment: str) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(content)

    done = client("predict", str(cluster.coordinator.address), str(trained["model"]), str(rows))

    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    assert fragment in done.stderr


@pytest.mark.slow
def test_evaluate_gives_the_clients_own_validation_error(
        cluster: LocalCluster, trained: dict[str, Path], tmp_path: Path) -> None:
    servable = load_servable(trained["model"])
    letters = read_data_dir(LETTERS)

    done = client("evaluate", str(cluster.coordinator.address), str(trained["model"]),
                  str(LETTERS), "--out", str(tmp_path / "eval"))

    assert done.returncode == 0, done.stderr
    validation_error = servable.meta["validation_error"]
    scores = servable.score(letters.validate.x, letters.validate.y)
    assert scores.error == validation_error
    assert f"error {validation_error:.2%} ({scores.n_errors} of 4000 rows)" in done.stdout
    table = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert table[0] == "class,rows,predicted,correct,precision,recall"
    assert [line.split(",")[0] for line in table[1:]] == LETTER_NAMES
    assert sum(int(line.split(",")[3]) for line in table[1:]) == 4000 - scores.n_errors
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_evaluate_of_a_uci_file_scores_its_rows(
        cluster: LocalCluster, trained: dict[str, Path], tmp_path: Path) -> None:
    letters = read_data_dir(LETTERS)
    servable = load_servable(trained["ensemble"])
    uci = tmp_path / "validate.data"
    uci.write_text("".join(LETTER_NAMES[c] + "," + ",".join(str(int(v)) for v in r) + "\n"
                           for r, c in zip(letters.validate.x, letters.validate.y, strict=True)))

    done = client("evaluate", str(cluster.coordinator.address), str(trained["ensemble"]),
                  str(uci))

    assert done.returncode == 0, done.stderr
    scores = servable.score(letters.validate.x, letters.validate.y)
    assert f"({scores.n_errors} of 4000 rows)" in done.stdout
    assert f"mean loss {scores.mean_loss:.4f}" in done.stdout


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_predict_fails_over_to_the_next_coordinator(
        cluster: LocalCluster, trained: dict[str, Path]) -> None:
    servable = load_servable(trained["model"])
    letters = read_data_dir(LETTERS)

    done = client("predict", f"127.0.0.1:{_closed_port()}", str(trained["model"]),
                  str(LETTERS / "validate_letters.txt"),
                  "--coordinators", str(cluster.coordinator.address))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [LETTER_NAMES[i]
                                        for i in servable.predict(letters.validate.x)]
