"""The client trusts nothing it did not compute: a coordinator's bad answer is never applied.

Unit tests build real RoundResults from real arrays (encoded as on the wire, decoded by
the client's check); the end-to-end tests run the real client command against a real
Thrift coordinator in this process that answers a malformed result, and check that the
command fails in one line and leaves the checkpoint byte for byte as it was.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from client.training import BadRoundResult, verified_updates
from harness import REPO
from idl.gen import Coordinator
from idl.gen.ttypes import (
    ClusterStatus,
    RoundRequest,
    RoundResult,
    ShardRef,
    TaskRecord,
    TaskResult,
    TaskTimings,
    Tensor,
)
from idl.rpc import ThriftServer
from idl.tensors import decode_tensors, encode_tensors
from mlcore.fedavg import fedavg
from mlcore.model import Params, init_params

D, H, K = 4, 3, 2
ROWS = (20, 30)


def refs() -> list[ShardRef]:
    return [ShardRef(name=f"train_{i + 1}.txt", digest=f"{i:064x}", n_rows=n, n_bytes=0)
            for i, n in enumerate(ROWS)]


def deltas(seed: int) -> list[np.ndarray]:
    """A real update: trained-looking weights minus the model's, for shard `seed`."""
    return [t * 0.5 - 0.001 * seed for t in init_params(D, H, K, seed=seed + 7).tensors()]


def task_result(delta: list[np.ndarray] | list[Tensor], n_samples: int) -> TaskResult:
    tensors = delta if delta and isinstance(delta[0], Tensor) else encode_tensors(delta)
    return TaskResult(delta=tensors, n_samples=n_samples, train_loss=0.5, train_error=0.25,
                      timings=TaskTimings(0.0, 0.01, 0.0, 0.02), node="127.0.0.1:1")


def record(index: int, shards: list[ShardRef], n_samples: int | None = None) -> TaskRecord:
    ref = shards[index]
    return TaskRecord(shard_index=index, shard=ref.name, node="127.0.0.1:1", attempts=1,
                      failures=[], timings=TaskTimings(0.0, 0.01, 0.0, 0.02), start_s=0.0,
                      end_s=0.02, n_samples=ref.n_rows if n_samples is None else n_samples,
                      train_loss=0.5, train_error=0.25)


def good_result(shards: list[ShardRef]) -> RoundResult:
    return RoundResult(
        results=[task_result(deltas(i), ref.n_rows) for i, ref in enumerate(shards)],
        records=[record(i, shards) for i in range(len(shards))],
        wall_s=0.1, coordinator="127.0.0.1:9", policy="round-robin",
    )


def with_nan(delta: list[np.ndarray], value: float = np.nan) -> list[np.ndarray]:
    out = [t.copy() for t in delta]
    out[2][1, 0] = value
    return out


def test_a_good_result_gives_the_same_weights_as_decoding_it_directly() -> None:
    params = init_params(D, H, K, seed=1)
    shards = refs()
    result = good_result(shards)

    updates = verified_updates(shards, params, result, round_no=1)

    assert [n for _, n in updates] == list(ROWS)
    direct = [(Params.from_tensors(decode_tensors(r.delta)), r.n_samples) for r in result.results]
    got, want = fedavg(params, updates), fedavg(params, direct)
    assert all(a.tobytes() == b.tobytes()
               for a, b in zip(got.tensors(), want.tensors(), strict=True))


def _drop_last(r: RoundResult) -> None:
    r.results.pop()
    r.records.pop()


def _duplicate(r: RoundResult) -> None:
    r.records[1] = record(0, refs())


def _extra_index(r: RoundResult) -> None:
    r.results.append(r.results[0])
    r.records.append(record(0, refs() + refs()))
    r.records[-1].shard_index = 2


def _extra_result(r: RoundResult) -> None:
    r.results.append(r.results[0])


def _missing_result(r: RoundResult) -> None:
    r.results.pop()


def _swapped(r: RoundResult) -> None:
    r.records.reverse()


def _wrong_name(r: RoundResult) -> None:
    r.records[1].shard = "train_9.txt"


def _shape(r: RoundResult) -> None:
    r.results[1] = task_result([t[..., :1] if t.ndim == 2 else t for t in deltas(1)], ROWS[1])


def _three_tensors(r: RoundResult) -> None:
    r.results[1] = task_result(deltas(1)[:3], ROWS[1])


def _n_samples(r: RoundResult) -> None:
    r.results[1].n_samples = ROWS[1] + 1


def _record_n_samples(r: RoundResult) -> None:
    r.records[1] = record(1, refs(), n_samples=ROWS[1] * 2)


def _nan(r: RoundResult) -> None:
    r.results[1] = task_result(with_nan(deltas(1)), ROWS[1])


def _inf(r: RoundResult) -> None:
    r.results[1] = task_result(with_nan(deltas(1), -np.inf), ROWS[1])


def _short_bytes(r: RoundResult) -> None:
    tensors = encode_tensors(deltas(1))
    tensors[0] = Tensor(shape=tensors[0].shape, data=tensors[0].data[:-8])
    r.results[1] = task_result(tensors, ROWS[1])


def _nan_loss(r: RoundResult) -> None:
    r.results[1].train_loss = float("nan")


def _none(r: RoundResult) -> None:
    r.results[1] = None


@pytest.mark.parametrize(
    ("corrupt", "fragments"),
    [
        (_drop_last, ["shard 1 (train_2.txt)", "no result"]),
        (_duplicate, ["shard 0 (train_1.txt)", "2 results"]),
        (_extra_index, ["shard index 2", "has 2 shards"]),
        (_extra_result, ["3 results for 2 shards"]),
        (_missing_result, ["shard 1 (train_2.txt)", "no result"]),
        (_swapped, ["shard 1", "not in shard order"]),
        (_wrong_name, ["shard 1 (train_2.txt)", "train_9.txt"]),
        (_shape, ["shard 1 (train_2.txt)", "delta shapes [4, 1]", "model's [4, 3]"]),
        (_three_tensors, ["shard 1 (train_2.txt)", "delta shapes"]),
        (_n_samples, ["shard 1 (train_2.txt)", "n_samples is 31", "30 rows"]),
        (_record_n_samples, ["shard 1 (train_2.txt)", "n_samples is 60"]),
        (_nan, ["shard 1 (train_2.txt)", "delta[2]", "NaN or infinite"]),
        (_inf, ["shard 1 (train_2.txt)", "delta[2]", "NaN or infinite"]),
        (_short_bytes, ["shard 1 (train_2.txt)", "delta[0]", "bytes"]),
        (_nan_loss, ["shard 1 (train_2.txt)", "train_loss", "not a finite number"]),
        (_none, ["shard 1 (train_2.txt)", "no result"]),
    ],
)
def test_a_bad_result_is_refused_naming_the_shard(
    corrupt: Callable[[RoundResult], None], fragments: list[str]
) -> None:
    params = init_params(D, H, K, seed=1)
    shards = refs()
    result = good_result(shards)
    corrupt(result)

    with pytest.raises(BadRoundResult) as caught:
        verified_updates(shards, params, result, round_no=3)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("round 3: coordinator 127.0.0.1:9 sent a bad")
    for fragment in fragments:
        assert fragment in message, message


def test_deltas_of_another_model_size_are_refused() -> None:
    params = init_params(D, H + 1, K, seed=1)  # the client's model is wider than the deltas
    shards = refs()

    with pytest.raises(BadRoundResult, match=r"shard 0 \(train_1.txt\): delta shapes"):
        verified_updates(shards, params, good_result(shards))


def test_fedavg_refuses_non_finite_input_even_unchecked() -> None:
    params = init_params(D, H, K, seed=1)
    bad = Params(*with_nan(deltas(1)))

    with pytest.raises(ValueError, match="update 0"):
        fedavg(params, [(bad, 3)])


# ------------------------------------------------------------------------- end to end


class MalformingCoordinator:
    """A real Coordinator service whose run_round answer is made by `answer(request)`."""

    def __init__(self) -> None:
        self.answer: Callable[[RoundRequest], RoundResult] = honest_zero_round
        self.rounds: list[int] = []

    def ping(self) -> bool:
        return True

    def status(self, token: str = "") -> ClusterStatus:
        return ClusterStatus(nodes=[], policy="round-robin", counters={})

    def missing_shards(self, digests: list[str], token: str = "") -> list[str]:
        return []

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        pass

    def run_round(self, request: RoundRequest) -> RoundResult:
        self.rounds.append(request.round)
        return self.answer(request)

    def register_node(self, host: str, port: int, token: str = "") -> None:
        pass


def honest_zero_round(request: RoundRequest) -> RoundResult:
    """What a coordinator whose nodes learnt nothing would answer: zero deltas, right counts."""
    zeros = [np.zeros(tuple(t.shape)) for t in request.weights]
    shards = list(request.shards)
    return RoundResult(
        results=[task_result(zeros, ref.n_rows) for ref in shards],
        records=[record(i, shards) for i in range(len(shards))],
        wall_s=0.01, coordinator="in-test", policy="round-robin",
    )


def nan_in_shard_1(request: RoundRequest) -> RoundResult:
    result = honest_zero_round(request)
    result.results[1] = task_result(with_nan(decode_tensors(result.results[1].delta)),
                                    request.shards[1].n_rows)
    return result


def shard_1_missing(request: RoundRequest) -> RoundResult:
    result = honest_zero_round(request)
    del result.results[1], result.records[1]
    return result


def wrong_rows_in_shard_0(request: RoundRequest) -> RoundResult:
    result = honest_zero_round(request)
    result.results[0].n_samples = 1_000_000
    return result


@pytest.fixture
def coordinator() -> Iterator[tuple[MalformingCoordinator, int]]:
    handler = MalformingCoordinator()
    server = ThriftServer(Coordinator.Processor(handler), "127.0.0.1", 0, name="fake-coordinator")
    thread = server.start()
    try:
        yield handler, server.address.port
    finally:
        server.stop()
        thread.join(timeout=10)


def write_data(directory: Path) -> Path:
    rng = np.random.default_rng(5)
    directory.mkdir()
    for name, n in (("train_a.txt", 12), ("train_b.txt", 9), ("train_c.txt", 7),
                    ("validate_v.txt", 10)):
        x = rng.integers(0, 16, size=(n, D))
        y = rng.integers(0, 3, size=n)
        (directory / name).write_text("".join(f"{','.join(map(str, r))},{c}\n"
                                              for r, c in zip(x, y, strict=True)))
    return directory


def run_client(port: int, data: Path, workdir: Path, rounds: int, *extra: str):
    argv = [sys.executable, "-m", "client", "127.0.0.1", str(port), str(data), str(rounds), "2",
            "5", "0.01", "--checkpoint", str(workdir / "ckpt.npz"),
            "--timing", str(workdir / "timing.txt"), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize(
    ("answer", "fragments"),
    [
        (nan_in_shard_1, ["shard 1 (train_b.txt)", "NaN or infinite"]),
        (shard_1_missing, ["shard 1 (train_b.txt)", "no result"]),
        (wrong_rows_in_shard_0, ["shard 0 (train_a.txt)", "n_samples is 1000000", "12 rows"]),
    ],
)
def test_client_fails_cleanly_and_keeps_its_checkpoint(
    coordinator, tmp_path: Path, answer: Callable[[RoundRequest], RoundResult],
    fragments: list[str],
) -> None:
    handler, port = coordinator
    data = write_data(tmp_path / "data")
    first = run_client(port, data, tmp_path, 1)
    assert first.returncode == 0, first.stderr
    checkpoint = (tmp_path / "ckpt.npz").read_bytes()

    handler.answer = answer
    done = run_client(port, data, tmp_path, 3, "--resume")

    assert handler.rounds == [1, 2]  # the bad round was asked for, and nothing after it
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, done.stderr
    assert "round 2: coordinator in-test sent a bad" in error_lines[0]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert "checkpoint keeps the last completed round" in error_lines[0]
    assert "round 2/3" not in done.stdout
    assert (tmp_path / "ckpt.npz").read_bytes() == checkpoint
