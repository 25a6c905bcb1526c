"""The compute node as a real process on loopback: training, shards, errors, load, faults, CLI."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from thrift.transport.TTransport import TTransportException

from compute_node.registration import Registrar, resolve_all
from harness import REPO, ServerProcess, start_node
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    DatasetError,
    InvalidRequest,
    NodeBusy,
    ShardMissing,
    ShardRef,
    ShardTask,
    Tensor,
    TrainConfig,
    Unauthorized,
)
from idl.rpc import Address, ThriftServer, connect
from idl.tensors import decode_tensors, encode_tensors
from mlcore.data import parse_data
from mlcore.model import Params, init_params, train

D, H, K = 16, 8, 5


def make_shard(n_rows: int = 300, d: int = D, k: int = K, seed: int = 0) -> bytes:
    """A numeric-format shard of random integer features 0..15 and labels 0..k-1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, (n_rows, d))
    y = rng.integers(0, k, n_rows)
    rows = (",".join(map(str, [*row, label])) + "\n" for row, label in zip(x, y, strict=True))
    return "".join(rows).encode()


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_task(
    data: bytes,
    params: Params | None = None,
    *,
    epochs: int = 3,
    eta: float = 1e-3,
    may_decline: bool = False,
    weights: list[Tensor] | None = None,
    token: str = "",
    **config: object,
) -> ShardTask:
    params = params or init_params(D, H, K, seed=1)
    return ShardTask(
        job_id="test",
        round=1,
        shard_index=0,
        shard=ShardRef(name="train_0.txt", digest=digest_of(data), n_rows=0, n_bytes=len(data)),
        weights=weights if weights is not None else encode_tensors(params.tensors()),
        config=TrainConfig(epochs=epochs, eta=eta, **config),
        may_decline=may_decline,
        timeout_s=30.0,
        token=token,
    )


class NodeClient:
    """One connection to a node; closed by the fixture that made it."""

    def __init__(self, address: Address, timeout_s: float = 30.0) -> None:
        self.conn = connect(ComputeNode.Client, address, timeout_s)
        self.client = self.conn.client

    def close(self) -> None:
        self.conn.close()


StartNode = Callable[..., tuple[ServerProcess, ComputeNode.Client]]


@contextmanager
def started_nodes(workdir: Path) -> Iterator[StartNode]:
    """start(p, *args) → (process, client): a node process in `workdir` (start_node's
    arguments) and a NodeClient to it. On exit, also when a test failed, every client is
    closed and every process stopped by PID."""
    procs: list[ServerProcess] = []
    clients: list[NodeClient] = []

    def start(p: float, *args: str) -> tuple[ServerProcess, ComputeNode.Client]:
        proc = start_node(workdir, p, *args)
        procs.append(proc)
        clients.append(NodeClient(proc.address))
        return proc, clients[-1].client

    try:
        yield start
    finally:
        try:
            for c in clients:
                c.close()
        finally:
            for proc in procs:
                proc.stop()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[StartNode]:
    """start(p, *args) → (process, client); every process is stopped by PID afterwards."""
    with started_nodes(tmp_path) as start_with:

        def start(p: float = 0.0, *extra: str) -> tuple[ServerProcess, ComputeNode.Client]:
            args = extra if "--load-delay" in extra else ("--load-delay", "0", *extra)
            return start_with(p, "--seed", "7", *args)

        yield start


@pytest.fixture
def node(node_factory) -> ComputeNode.Client:
    return node_factory(0.0)[1]


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory) -> Iterator[ComputeNode.Client]:
    """One node for the tests that only check errors: starting a node per case costs ~0.7 s."""
    with started_nodes(tmp_path_factory.mktemp("shared-node")) as start:
        yield start(0.0, "--load-delay", "0")[1]


# --- the ordinary path ----------------------------------------------------------------------


def test_ping_and_load_describe_an_idle_node(node_factory):
    _, client = node_factory(0.25)

    assert client.ping() is True
    load = client.load("")

    assert load.load_probability == 0.25
    assert (load.tasks_in_flight, load.tasks_done, load.tasks_declined) == (0, 0, 0)
    assert load.shards_cached == 0


def test_train_delta_is_bitwise_equal_to_in_process_training(node_factory):
    proc, node = node_factory(0.0)
    data = make_shard(seed=3)
    params = init_params(D, H, K, seed=5)
    node.put_shard(digest_of(data), data, "")

    result = node.train(make_task(data, params, epochs=7, eta=2e-3, seed=11))

    shard = parse_data(data, "local")
    expected = train(params, shard.x, shard.y, epochs=7, eta=2e-3, seed=11)
    delta = decode_tensors(result.delta)
    for got, new, old in zip(delta, expected.params.tensors(), params.tensors(), strict=True):
        assert got.shape == old.shape
        assert np.array_equal(got, new - old)
    assert np.abs(delta[0]).max() > 0  # training moved the weights
    assert result.n_samples == 300
    assert result.train_loss == expected.loss
    assert result.train_error == expected.error
    assert result.node == str(proc.address)
    assert result.timings.compute_s > 0
    assert result.timings.total_s >= result.timings.compute_s
    assert node.load("").tasks_done == 1


def test_standardised_task_trains_on_shifted_scaled_rows_and_leaves_the_cache_raw(node):
    data = make_shard(seed=6)
    params = init_params(D, H, K, seed=5, scheme="he")
    node.put_shard(digest_of(data), data, "")
    shard = parse_data(data, "local")
    shift = [float(v) for v in shard.x.mean(axis=0)]
    scale = [float(v) for v in 1 / shard.x.std(axis=0)]

    standardised = node.train(make_task(data, params, epochs=2, eta=1e-3, batch_size=32,
                                        momentum=0.9, feature_shift=shift, feature_scale=scale))
    raw = node.train(make_task(data, params, epochs=2, eta=1e-3, batch_size=32, momentum=0.9))

    x = (shard.x - np.array(shift)) * np.array(scale)
    for result, rows in ((standardised, x), (raw, shard.x)):
        want = train(params, rows, shard.y, epochs=2, eta=1e-3, batch_size=32, momentum=0.9)
        delta = decode_tensors(result.delta)
        for got, new, old in zip(delta, want.params.tensors(), params.tensors(), strict=True):
            assert np.array_equal(got, new - old)
        assert result.train_loss == want.loss
    assert not np.array_equal(decode_tensors(standardised.delta)[0], decode_tensors(raw.delta)[0])


def test_unknown_digest_is_shard_missing_until_it_is_put(node):
    data = make_shard(seed=4)
    task = make_task(data)

    with pytest.raises(ShardMissing) as missing:
        node.train(task)
    assert missing.value.digest == digest_of(data)
    assert "put_shard" in missing.value.message
    assert node.missing_shards([digest_of(data)], "") == [digest_of(data)]

    node.put_shard(digest_of(data), data, "")

    assert node.missing_shards([digest_of(data)], "") == []
    assert node.train(task).n_samples == 300
    assert node.load("").shards_cached == 1


def test_put_shard_with_wrong_digest_is_invalid_request(shared_node):
    data = make_shard()

    with pytest.raises(InvalidRequest) as bad:
        shared_node.put_shard(digest_of(data + b"x"), data, "")
    assert "hash" in bad.value.message
    with pytest.raises(InvalidRequest) as malformed:
        shared_node.put_shard("../../etc/passwd", data, "")
    assert "64 lowercase hex" in malformed.value.message
    assert shared_node.missing_shards([digest_of(data)], "") == [digest_of(data)]


def test_bad_shard_bytes_give_dataset_error_naming_the_line(shared_node):
    lines = make_shard(n_rows=20).decode().splitlines()
    lines[16] = lines[16].rsplit(",", 1)[0]  # line 17 loses its label column
    data = ("\n".join(lines) + "\n").encode()

    with pytest.raises(DatasetError) as error:
        shared_node.put_shard(digest_of(data), data, "")

    assert "line 17" in error.value.message
    assert "fields" in error.value.message


def test_shard_that_does_not_fit_the_model_is_dataset_error(shared_node):
    wide = make_shard(n_rows=30, d=D + 1, seed=1)
    many_classes = make_shard(n_rows=200, k=K + 3, seed=2)
    for data in (wide, many_classes):
        shared_node.put_shard(digest_of(data), data, "")

    with pytest.raises(DatasetError) as features:
        shared_node.train(make_task(wide))
    with pytest.raises(DatasetError) as labels:
        shared_node.train(make_task(many_classes))

    assert f"{D + 1} features" in features.value.message
    assert f"d = {D}" in features.value.message
    assert "line " in labels.value.message
    assert f"k = {K}" in labels.value.message


def _weights(params: Params) -> list[Tensor]:
    return encode_tensors(params.tensors())


GOOD = init_params(D, H, K, seed=1)
TRUNCATED = _weights(GOOD)
TRUNCATED[0] = Tensor(shape=TRUNCATED[0].shape, data=TRUNCATED[0].data[:-8])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"eta": 0.0}, "eta"),
        ({"eta": -0.1}, "eta"),
        ({"eta": math.nan}, "eta"),
        ({"eta": math.inf}, "eta"),
        ({"batch_size": -1}, "batch_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"seed": -1}, "seed"),
        ({"feature_shift": [0.0] * D, "feature_scale": [1.0] * (D - 1)}, "feature_scale has 15"),
        ({"feature_shift": [0.0] * (D + 1), "feature_scale": [1.0] * D}, "feature_shift has 17"),
        ({"feature_shift": [0.0] * D}, "feature_scale has 0 values"),
        ({"feature_shift": [math.nan] * D, "feature_scale": [1.0] * D}, "feature_shift[0]"),
        ({"feature_shift": [0.0] * D, "feature_scale": [1.0] * 3 + [math.inf] * 13},
         "feature_scale[3]"),
        ({"weights": _weights(init_params(D, H, K, 1))[:3]}, "expected 4 tensors"),
        ({"weights": [*_weights(GOOD)[:2], *_weights(init_params(H + 1, 4, K, 1))[2:]]}, "agree"),
        ({"weights": TRUNCATED}, "bytes"),
        ({"weights": [Tensor(shape=[D, H], data=b"\0" * 7), *TRUNCATED[1:]]}, "bytes"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_invalid_task_is_invalid_request_with_a_clear_message(shared_node, overrides, needle):
    data = make_shard(n_rows=50)
    shared_node.put_shard(digest_of(data), data, "")
    overrides = dict(overrides)
    weights = overrides.pop("weights", None)

    with pytest.raises(InvalidRequest) as error:
        shared_node.train(make_task(data, weights=weights, **overrides))

    assert needle in error.value.message
    assert shared_node.ping()


def test_diverging_training_is_invalid_request(shared_node):
    data = make_shard(n_rows=50)
    shared_node.put_shard(digest_of(data), data, "")

    with pytest.raises(InvalidRequest) as error:
        shared_node.train(make_task(data, eta=1e300, epochs=5))

    assert "eta" in error.value.message


def test_token_is_required_when_the_node_has_one(node_factory):
    _, client = node_factory(0.0, "--token", "s3cret")
    data = make_shard(n_rows=40)

    with pytest.raises(Unauthorized):
        client.put_shard(digest_of(data), data, "wrong")
    with pytest.raises(Unauthorized):
        client.train(make_task(data, token=""))
    client.put_shard(digest_of(data), data, "s3cret")

    assert client.train(make_task(data, token="s3cret")).n_samples == 40


# --- data dir -------------------------------------------------------------------------------


def test_data_dir_shard_is_served_by_digest_without_upload(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = make_shard(seed=9)
    (data_dir / "train_1.txt").write_bytes(data)
    _, client = node_factory(0.0, "--data-dir", str(data_dir))

    assert client.missing_shards([digest_of(data), "0" * 64], "") == ["0" * 64]
    result = client.train(make_task(data))

    assert result.n_samples == 300
    assert client.load("").shards_cached == 1


def test_data_dir_never_serves_files_outside_it(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    outside = make_shard(seed=10)
    sibling = make_shard(seed=11)
    (tmp_path / "secret.txt").write_bytes(outside)
    (tmp_path / "sibling.txt").write_bytes(sibling)
    (data_dir / "link.txt").symlink_to(tmp_path / "secret.txt")
    _, client = node_factory(0.0, "--data-dir", str(data_dir))

    for data in (outside, sibling):
        assert client.missing_shards([digest_of(data)], "") == [digest_of(data)]
        with pytest.raises(ShardMissing):
            client.train(make_task(data))


# --- load simulation ------------------------------------------------------------------------


def test_fully_loaded_node_declines_every_task_that_may_be_declined(node_factory):
    _, client = node_factory(1.0, "--load-delay", "5")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")

    for _ in range(5):
        with pytest.raises(NodeBusy) as busy:
            client.train(make_task(data, may_decline=True))
        assert busy.value.retry_after_s > 0

    load = client.load("")
    assert (load.tasks_declined, load.tasks_done) == (5, 0)


def test_fully_loaded_node_delays_every_accepted_task(node_factory):
    _, client = node_factory(1.0, "--load-delay", "0.3")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")

    started = time.monotonic()
    result = client.train(make_task(data, may_decline=False))
    elapsed = time.monotonic() - started

    assert result.timings.load_delay_s >= 0.3
    assert result.timings.total_s >= 0.3
    assert elapsed >= 0.3


def test_unloaded_node_never_delays(node_factory):
    _, client = node_factory(0.0, "--load-delay", "5")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")

    for may_decline in (True, False, True):
        result = client.train(make_task(data, may_decline=may_decline))
        assert result.timings.load_delay_s == 0.0
        assert result.timings.total_s < 5

    assert client.load("").tasks_declined == 0


def test_tasks_queue_for_the_single_worker_and_report_their_wait(node_factory):
    proc, client = node_factory(1.0, "--load-delay", "0.3")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")
    results = []

    def run() -> None:
        other = NodeClient(proc.address)
        try:
            results.append(other.client.train(make_task(data)))
        finally:
            other.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    waits = sorted(r.timings.wait_s for r in results)
    assert len(results) == 2
    assert waits[0] < 0.2
    assert waits[1] >= 0.25  # queued behind the other task's 0.3 s load delay
    assert client.load("").tasks_done == 2


# --- faults ---------------------------------------------------------------------------------


def test_crash_probability_one_kills_the_process_mid_task(node_factory):
    proc, client = node_factory(0.0, "--crash-probability", "1")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")

    with pytest.raises(TTransportException):
        client.train(make_task(data))

    assert proc.popen.wait(timeout=10) == 1
    assert "event=injected_crash" in proc.log()


def test_extra_latency_delays_the_reply(node_factory):
    _, client = node_factory(0.0, "--extra-latency", "0.3")
    data = make_shard(n_rows=40)
    client.put_shard(digest_of(data), data, "")

    started = time.monotonic()
    result = client.train(make_task(data))

    assert time.monotonic() - started >= 0.3
    assert result.timings.total_s >= 0.3
    assert result.timings.load_delay_s == 0.0


def _timed_ping(address: Address) -> float:
    started = time.monotonic()
    fresh = NodeClient(address, timeout_s=5.0)
    try:
        assert fresh.client.ping() is True
    finally:
        fresh.close()
    return time.monotonic() - started


def test_garbage_forged_frames_and_idle_connections_do_not_block_others(node_factory):
    proc, client = node_factory(0.0)
    host, port = proc.address.host, proc.address.port
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(10)]
    garbage = socket.create_connection((host, port), timeout=5)
    forged = socket.create_connection((host, port), timeout=5)
    try:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(512))
        forged.sendall(struct.pack("!i", 2**31 - 1) + b"\x80\x01\x00\x01")

        ping_s = _timed_ping(proc.address)

        assert ping_s < 1.0
        assert client.ping() is True  # the existing connection also still works
    finally:
        for s in [*idle, garbage, forged]:
            s.close()
    assert proc.popen.poll() is None


@pytest.mark.slow
def test_ping_stays_fast_while_a_long_task_trains(node_factory):
    proc, client = node_factory(0.0)
    data = make_shard(n_rows=2000, k=26, seed=5)
    client.put_shard(digest_of(data), data, "")
    params = init_params(D, 256, 26, seed=1)
    outcome: dict[str, object] = {}
    # Size the task by the kernels' speed here: about 1.5 s of training.
    shard = parse_data(data, "shard")
    started = time.perf_counter()
    train(params, shard.x, shard.y, epochs=10, eta=1e-4)
    epochs = max(10, int(10 * 1.5 / (time.perf_counter() - started)))

    def run() -> None:
        trainer = NodeClient(proc.address, timeout_s=120.0)
        try:
            task = make_task(data, params, epochs=epochs, eta=1e-4)
            outcome["result"] = trainer.client.train(task)
        finally:
            trainer.close()

    worker = threading.Thread(target=run)
    worker.start()
    while client.load("").tasks_in_flight == 0 and worker.is_alive():
        time.sleep(0.01)
    pings = []
    while worker.is_alive():
        started = time.monotonic()
        assert client.ping() is True
        pings.append(time.monotonic() - started)
        time.sleep(0.02)
    worker.join()

    compute_s = outcome["result"].timings.compute_s
    assert compute_s > 0.5, "the task must train long enough to overlap the pings"
    assert len(pings) >= 10
    assert max(pings) < 0.1, f"slowest ping {max(pings) * 1000:.1f} ms during training"


# --- registration with a coordinator --------------------------------------------------------


class RecordingCoordinator:
    """Just enough of the Coordinator service to see register_node calls."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, int, str]] = []

    def ping(self) -> bool:
        return True

    def register_node(self, host: str, port: int, token: str = "") -> None:
        self.registered.append((host, port, token))


def test_node_registers_with_its_coordinators_and_keeps_a_heartbeat(node_factory):
    recorder = RecordingCoordinator()
    server = ThriftServer(Coordinator.Processor(recorder), "127.0.0.1", 0, name="fake")
    server.start()
    try:
        proc, _ = node_factory(
            0.0, "--coordinator", str(server.address), "--heartbeat-s", "0.1", "--token", "t"
        )
        deadline = time.monotonic() + 10
        while len(recorder.registered) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.stop()

    assert len(recorder.registered) >= 2
    assert recorder.registered[0] == ("127.0.0.1", proc.address.port, "t")


def test_a_name_of_several_coordinators_registers_with_each_of_them():
    # A headless Service's name resolves to every coordinator replica: each must learn the node.
    first, second = RecordingCoordinator(), RecordingCoordinator()
    one = ThriftServer(Coordinator.Processor(first), "127.0.0.1", 0, name="one")
    two = ThriftServer(Coordinator.Processor(second), "127.0.0.2", one.address.port, name="two")
    one.start()
    two.start()
    name = Address("coordinators.example", one.address.port)
    registrar = Registrar(
        [name], Address("127.0.0.1", 9999), "t", 0.05,
        resolve=lambda a: [Address("127.0.0.1", a.port), Address("127.0.0.2", a.port)],
    )
    registrar.start()
    try:
        deadline = time.monotonic() + 10
        while not (first.registered and second.registered) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        registrar.stop()
        one.stop()
        two.stop()
    assert first.registered[0] == second.registered[0] == ("127.0.0.1", 9999, "t")


def test_resolving_keeps_a_single_address_and_one_family():
    assert resolve_all(Address("127.0.0.1", 9090)) == [Address("127.0.0.1", 9090)]
    assert resolve_all(Address("localhost", 9090)) == [Address("localhost", 9090)]


# --- process and CLI ------------------------------------------------------------------------


def test_sigterm_stops_the_node_cleanly(node_factory):
    proc, _ = node_factory(0.0)

    proc.popen.send_signal(signal.SIGTERM)

    assert proc.popen.wait(timeout=10) == 0
    assert "event=stopped" in proc.log()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["0", "1.5"], "LOAD_PROBABILITY"),
        (["-1", "0.5"], "-1"),
        (["70000", "0.5"], "PORT"),
        (["0", "nan"], "finite"),
        (["0", "0.5", "--data-dir", "/nonexistent/shards"], "data-dir"),
        (["0", "0.5", "--crash-probability", "2"], "crash-probability"),
        (["0", "0.5", "--load-delay", "-1"], "load-delay"),
        (["0", "0.5", "--coordinator", "nohost"], "host:port"),
    ],
)
def test_bad_command_line_is_one_line_error_without_traceback(tmp_path, args, needle):
    run = subprocess.run(
        [sys.executable, "-m", "compute_node", *args],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def test_port_in_use_is_a_clear_error(node_factory, tmp_path):
    proc, _ = node_factory(0.0)

    run = subprocess.run(
        [sys.executable, "-m", "compute_node", str(proc.address.port), "0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    assert run.returncode != 0
    assert "cannot listen" in run.stderr
    assert "Traceback" not in run.stderr
