"""Serving through the cluster: models held by digest, micro-batched predictions, evaluation.

Real processes on loopback (a coordinator and compute nodes on ports the OS picks, stopped by
PID also when a test fails). The models are made here with mlcore directly: a FedAvg of two
shard models and an ensemble of three, on the default letters data, standardised, with
class names. Every answer through the cluster is compared bit for bit with the same model
in-process (mlcore.servable.Servable), with batching on (many concurrent clients) and off.
The batcher's own rules (exactly-once, order, the queue bound) are checked first, on plain
functions, without processes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_for

import letters
from coordinator.batcher import Batch, Batcher, QueueFull
from harness import LocalCluster, ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    DeadlineExceeded,
    EvaluateRequest,
    InvalidRequest,
    ModelMissing,
    NoNodesAvailable,
    Overloaded,
    Prediction,
    PredictRequest,
    ShardRef,
    Tensor,
)
from idl.rpc import connect
from idl.tensors import decode_tensor, encode_tensor
from mlcore import model
from mlcore.data import DataDir, read_data_dir
from mlcore.fedavg import fedavg
from mlcore.servable import Servable, load_servable, save_servable
from mlcore.standardize import fit_standardization
from runtime.budget import OutOfTime

NAMES = tuple(chr(ord("A") + i) for i in range(26))
NODE_ARGS = ("--load-delay", "0")
# 12,000 rows to the 3-member ensemble (3 x 1,058 parameters) are 3.8e7: refused; the
# 4,000 validation rows to it (1.3e7) are not.
SERVING_ARGS = ("--max-predict-work", "20000000", "--heartbeat-s", "0.2")


# ------------------------------------------------------------------ the batcher alone


def echo(batch: Batch) -> list[tuple[int, int]]:
    """Each request's answer: its own rows (ints) and the batch's size."""
    return [(r.rows, batch.n_rows) for r in batch.requests]


def submit_all(batcher: Batcher, sizes: list[int], deadline_s: float = 10.0) -> list:
    """Submit one request per size from its own thread at once; answers in submit order."""
    answers: list = [None] * len(sizes)

    def one(i: int) -> None:
        try:
            answers[i] = batcher.submit("m", i, sizes[i], False, deadline_s)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def test_every_request_gets_its_own_answer_once_in_batches_no_larger_than_the_maximum():
    seen: list[list[int]] = []

    def run(batch: Batch) -> list:
        seen.append([r.rows for r in batch.requests])
        time.sleep(0.01)  # a node's round trip: the others queue meanwhile
        return echo(batch)

    batcher = Batcher(run, max_rows=8, wait_s=0.05, senders=2)
    try:
        answers = submit_all(batcher, [1, 3, 1, 2, 20, 1] * 6)
    finally:
        batcher.close()

    assert [a[0] for a in answers] == list(range(36))  # each its own, once
    ids = [i for batch in seen for i in batch]
    assert sorted(ids) == list(range(36))  # every request sent exactly once
    sizes = [1, 3, 1, 2, 20, 1] * 6
    for batch in seen:
        rows = sum(sizes[i] for i in batch)
        assert rows <= 8 or len(batch) == 1  # a request over the maximum goes alone
    assert max(len(b) for b in seen) > 1  # concurrent requests did share batches


def test_a_batch_error_reaches_every_request_of_the_batch_and_the_next_batch_runs():
    calls = []

    def run(batch: Batch) -> list:
        calls.append(len(batch.requests))
        if len(calls) == 1:
            raise RuntimeError("node exploded")
        return echo(batch)

    batcher = Batcher(run, max_rows=4, wait_s=0.0, senders=1)
    try:
        first = submit_all(batcher, [1])
        second = submit_all(batcher, [1, 1])
    finally:
        batcher.close()

    assert isinstance(first[0], RuntimeError)
    assert [a[0] for a in second] == [0, 1]


def test_a_request_past_its_deadline_is_answered_deadline_exceeded_once_and_never_later():
    release = threading.Event()
    sent: list[int] = []

    def run(batch: Batch) -> list:
        sent.extend(r.rows for r in batch.requests)
        release.wait(10)
        return echo(batch)

    batcher = Batcher(run, max_rows=100, wait_s=10.0, senders=1)
    try:
        holder = threading.Thread(target=submit_all, args=(batcher, [5]))
        holder.start()
        while not sent:  # the first batch is out: the next waits for it (or for 10 s)
            time.sleep(0.001)
        with pytest.raises(OutOfTime):
            batcher.submit("m", 99, 1, False, 0.05)  # queued behind it, then too late
        release.set()
        holder.join(10)
        assert batcher.held_rows() == 0
    finally:
        batcher.close()
    assert 99 not in sent  # it left the queue at its deadline: never sent


def test_the_queue_bound_answers_queue_full_at_once_and_frees_as_requests_finish():
    release = threading.Event()

    def run(batch: Batch) -> list:
        release.wait(10)
        return echo(batch)

    batcher = Batcher(run, max_rows=100, wait_s=0.0, max_queued_rows=6, senders=1)
    try:
        holder = threading.Thread(target=submit_all, args=(batcher, [6]))
        holder.start()
        while batcher.held_rows() < 6:
            time.sleep(0.001)
        began = time.monotonic()
        with pytest.raises(QueueFull) as full:
            batcher.submit("m", 1, 1, False, 10.0)
        assert time.monotonic() - began < 0.5 and full.value.retry_after_s > 0
        assert "--max-queued-rows" in str(full.value)
        release.set()
        holder.join(10)
        assert batcher.submit("m", 7, 1, False, 10.0) == (7, 1)
    finally:
        batcher.close()


def test_no_batching_runs_each_request_alone_on_its_own_thread():
    runners = []

    def run(batch: Batch) -> list:
        runners.append(threading.current_thread().name)
        return echo(batch)

    batcher = Batcher(run, max_rows=1, wait_s=1.0)
    began = time.monotonic()
    answers = submit_all(batcher, [1, 2, 1, 5])
    assert answers == [(0, 1), (1, 2), (2, 1), (3, 5)]
    assert time.monotonic() - began < 0.5  # nobody waited for company
    assert len(runners) == 4 and not any(n.startswith("batch-sender") for n in runners)


# ------------------------------------------------------------------ models made with mlcore


@pytest.fixture(scope="module")
def data() -> DataDir:
    return read_data_dir(letters.default_data_dir())


@pytest.fixture(scope="module")
def models(data: DataDir, tmp_path_factory) -> dict[str, tuple[Servable, bytes]]:
    """name -> (in-process Servable, its model file's bytes): a FedAvg model and an ensemble."""
    x_train = [shard.x for _, shard in data.train]
    stats = fit_standardization(x_train)
    start = model.init_params(16, 24, 26, seed=3, scheme="he")
    members = []
    for i in range(3):
        _, shard = data.train[i]
        members.append(model.train(start, stats.apply(shard.x), shard.y, epochs=3, eta=0.002,
                                   batch_size=32, momentum=0.9, seed=i + 1).params)
    averaged = fedavg(start, [(model.Params(*(m - s for m, s in zip(
        member.tensors(), start.tensors(), strict=True))), len(data.train[i][1].y))
        for i, member in enumerate(members[:2])])
    out = {}
    folder = tmp_path_factory.mktemp("models")
    for name, servable in [
        ("fedavg", Servable((averaged,), stats, NAMES, {"kind": "fedavg"})),
        ("ensemble", Servable(tuple(members), stats, NAMES, {"kind": "ensemble"})),
    ]:
        path = folder / f"{name}.npz"
        save_servable(path, servable)
        blob = path.read_bytes()
        out[name] = (load_servable(blob, name), blob)  # exactly what the servers read
    return out


def test_a_rows_answer_does_not_depend_on_the_rows_batched_with_it(models, data):
    rows = data.validate.x[:300]
    for servable, _ in models.values():
        whole = servable.predict_proba(rows)
        alone = np.concatenate([servable.predict_proba(rows[i:i + 1]) for i in range(len(rows))])
        assert whole.tobytes() == alone.tobytes()
        assert np.array_equal(servable.predict(rows), np.concatenate(
            [servable.predict(rows[i:i + 7]) for i in range(0, len(rows), 7)]))


# ------------------------------------------------------------------ clusters


def rpc(proc: ServerProcess, fn: Callable, service=Coordinator, timeout_s: float = 30.0):
    conn = connect(service.Client, proc.address, timeout_s)
    try:
        return fn(conn.client)
    finally:
        conn.close()


def start_cluster(workdir: Path, nodes: int, *coordinator_args: str) -> LocalCluster:
    cluster = LocalCluster(workdir)
    try:
        for _ in range(nodes):
            cluster.add_node(0.0, *NODE_ARGS)
        cluster.add_coordinator("round-robin", *SERVING_ARGS, *coordinator_args)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module", params=["batched", "unbatched"])
def serving(request, tmp_path_factory, models) -> Iterator[tuple[LocalCluster, dict[str, str]]]:
    """A 2-node cluster (batching on or off) holding both models; name -> digest."""
    args = () if request.param == "batched" else ("--no-batching",)
    cluster = start_cluster(tmp_path_factory.mktemp(request.param), 2, *args)
    try:
        digests = {}
        for name, (_, blob) in models.items():
            info = rpc(cluster.coordinator, lambda c, b=blob, n=name: c.put_model(b, n, ""))
            assert info.digest == hashlib.sha256(blob).hexdigest()
            digests[name] = info.digest
        yield cluster, digests
    finally:
        cluster.stop()


def predict(client, digest: str, rows: np.ndarray, proba: bool = False,
            deadline_s: float = 10.0) -> Prediction:
    return client.predict(PredictRequest(model=digest, rows=encode_tensor(rows),
                                         probabilities=proba, deadline_s=deadline_s))


def run_clients(address, n_clients: int, work: Callable[[object, int], None]) -> list:
    """`work(client, i)` on n_clients threads, each with its own connection; their errors."""
    errors: list = []

    def one(i: int) -> None:
        conn = connect(Coordinator.Client, address, 30.0)
        try:
            work(conn.client, i)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_the_coordinator_describes_and_lists_the_models_it_holds(serving, models):
    cluster, digests = serving
    listed = {m.name: m for m in rpc(cluster.coordinator, lambda c: c.list_models(""))}
    assert set(listed) == {"fedavg", "ensemble"}
    for name, info in listed.items():
        servable, blob = models[name]
        assert (info.digest, info.n_features, info.n_classes, info.n_bytes) == (
            digests[name], 16, 26, len(blob))
        assert info.members == len(servable.members) and info.class_names == list(NAMES)
    assert rpc(cluster.coordinator, lambda c: c.missing_models(
        [digests["fedavg"], "0" * 64], "")) == ["0" * 64]


@pytest.mark.parametrize("name", ["fedavg", "ensemble"])
def test_predictions_through_the_cluster_equal_the_model_in_process_bit_for_bit(
    serving, models, data, name
):
    cluster, digests = serving
    servable, _ = models[name]
    x = data.validate.x
    answers: dict[int, tuple[np.ndarray, Prediction]] = {}
    lock = threading.Lock()

    def work(client, i: int) -> None:
        for j in range(12):
            n = 1 + (i + j) % 5
            start = (97 * i + 13 * j) % (len(x) - n)
            rows = x[start:start + n]
            reply = predict(client, digests[name], rows, proba=(i + j) % 2 == 0)
            with lock:
                answers[i * 100 + j] = (rows, reply)

    errors = run_clients(cluster.coordinator.address, 16, work)

    assert not errors, errors[:3]
    assert len(answers) == 16 * 12
    batched = 0
    for rows, reply in answers.values():
        assert reply.labels == servable.predict(rows).tolist()
        if reply.probabilities.shape:
            proba = decode_tensor(reply.probabilities)
            assert proba.tobytes() == servable.predict_proba(rows).tobytes()
        batched += reply.batch_rows > len(rows)
    if "--no-batching" in cluster.coordinator.argv:
        assert batched == 0
    else:
        assert batched > 0  # concurrent requests rode together
    big = x[:900]  # one request of many rows: alone, whole, in order
    reply = rpc(cluster.coordinator, lambda c: predict(c, digests["fedavg"], big, proba=True))
    assert reply.labels == models["fedavg"][0].predict(big).tolist()
    assert decode_tensor(reply.probabilities).tobytes() == \
        models["fedavg"][0].predict_proba(big).tobytes()


def test_bad_rows_are_refused_naming_the_problem_and_the_server_keeps_serving(
    serving, models, data
):
    cluster, digests = serving
    digest = digests["fedavg"]
    rows = data.validate.x[:5].copy()
    nan_rows, inf_rows = rows.copy(), rows.copy()
    nan_rows[2, 7] = np.nan
    inf_rows[4, 0] = np.inf
    cases = [
        (lambda c: predict(c, digest, rows[:, :15]), "have 15 values each, the model takes 16"),
        (lambda c: predict(c, digest, nan_rows), r"rows\[2\] \(row 3\) holds NaN"),
        (lambda c: predict(c, digest, inf_rows), r"rows\[4\] \(row 5\)"),
        (lambda c: c.predict(PredictRequest(model=digest, rows=Tensor(shape=[2, 16],
                                                                     data=b"\0" * 8))),
         "needs 256 bytes, got 8"),
        (lambda c: predict(c, digests["ensemble"], np.tile(data.validate.x, (3, 1))),
         r"12,000 x 3,174 = 38,088,000 exceeds the bound of 20,000,000 \(--max-predict-work\)"),
        (lambda c: predict(c, digest, rows, deadline_s=float("nan")), "deadline_s"),
    ]
    for fn, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            rpc(cluster.coordinator, fn)
    with pytest.raises(ModelMissing) as missing:
        rpc(cluster.coordinator, lambda c: predict(c, "ab" * 32, rows))
    assert missing.value.digest == "ab" * 32 and "put_model" in missing.value.message
    with pytest.raises(InvalidRequest, match="not a model file|cannot read model file"):
        rpc(cluster.coordinator, lambda c: c.put_model(b"PK\x03\x04 not really", "x.npz", ""))
    # a node checks the same way when called directly
    rpc(cluster.nodes[0], lambda c: c.put_model(digest, models["fedavg"][1], ""), ComputeNode)
    with pytest.raises(InvalidRequest, match=r"rows\[2\] \(row 3\)"):
        rpc(cluster.nodes[0], lambda c: predict(c, digest, nan_rows), ComputeNode)
    assert rpc(cluster.coordinator, lambda c: predict(c, digest, rows)).labels


def shard_ref(path: Path) -> tuple[ShardRef, bytes]:
    blob = path.read_bytes()
    n_rows = sum(1 for line in blob.splitlines() if line.strip())
    return ShardRef(name=path.name, digest=hashlib.sha256(blob).hexdigest(), n_rows=n_rows,
                    n_bytes=len(blob)), blob


@pytest.mark.parametrize("name", ["fedavg", "ensemble"])
def test_evaluate_gives_the_clients_validation_error_for_the_same_model_and_data(
    serving, models, data, name
):
    cluster, digests = serving
    servable, _ = models[name]
    folder = letters.default_data_dir()
    paths = [sorted(folder.glob("validate_*"))[0], *[p for p, _ in data.train[:3]]]
    refs = []
    for path in paths:
        ref, blob = shard_ref(path)
        rpc(cluster.coordinator, lambda c, r=ref, b=blob: c.put_shard(r.digest, b, ""))
        refs.append(ref)

    alone = rpc(cluster.coordinator, lambda c: c.evaluate(
        EvaluateRequest(model=digests[name], shards=refs[:1])))
    several = rpc(cluster.coordinator, lambda c: c.evaluate(
        EvaluateRequest(model=digests[name], shards=refs)))

    x, y = data.validate.x, data.validate.y
    assert alone.n_rows == len(y)
    if name == "fedavg":  # the client's validation error: mlcore.model.error_rate
        (params,) = servable.members
        assert alone.n_errors / alone.n_rows == model.error_rate(
            params, servable.standardization.apply(x), y)
    expected = servable.score(x, y)
    assert alone.n_errors == expected.n_errors
    assert alone.summed_loss == expected.summed_loss
    assert np.array_equal(np.array(alone.confusion).reshape(26, 26), expected.confusion)
    per_shard = [expected] + [servable.score(s.x, s.y) for _, s in data.train[:3]]
    assert several.n_rows == sum(s.n_rows for s in per_shard)
    assert several.n_errors == sum(s.n_errors for s in per_shard)
    assert several.summed_loss == sum(s.summed_loss for s in per_shard)  # shard order
    assert several.n_classes == 26 and sum(several.confusion) == several.n_rows


def test_a_node_lacking_the_model_gets_it_once(tmp_path, models, data):
    cluster = start_cluster(tmp_path, 2)
    try:
        servable, blob = models["ensemble"]
        digest = rpc(cluster.coordinator, lambda c: c.put_model(blob, "e.npz", "")).digest
        for node in cluster.nodes:
            assert rpc(node, lambda c: c.missing_models([digest], ""), ComputeNode) == [digest]
        with pytest.raises(ModelMissing):
            rpc(cluster.nodes[0], lambda c: predict(c, digest, data.validate.x[:2]), ComputeNode)

        def work(client, i: int) -> None:
            for j in range(10):
                rows = data.validate.x[i * 10 + j:i * 10 + j + 2]
                assert predict(client, digest, rows).labels == servable.predict(rows).tolist()

        errors = run_clients(cluster.coordinator.address, 8, work)

        assert not errors, errors[:3]
        for node in cluster.nodes:
            assert rpc(node, lambda c: c.missing_models([digest], ""), ComputeNode) == []
            assert node.log().count("event=model_stored") == 1
        counters = rpc(cluster.coordinator, lambda c: c.status("")).counters
        assert counters["model_uploads"] == 2
    finally:
        cluster.stop()


def test_a_node_killed_while_16_clients_predict_loses_no_request_and_duplicates_none(
    tmp_path, models, data
):
    cluster = start_cluster(tmp_path, 3)
    try:
        servable, blob = models["fedavg"]
        digest = rpc(cluster.coordinator, lambda c: c.put_model(blob, "f.npz", "")).digest
        x = data.validate.x
        per_client = 40
        answered: list[tuple[int, bool]] = []
        progress = threading.Condition()

        def work(client, i: int) -> None:
            for j in range(per_client):
                start = (i * per_client + j) * 2 % (len(x) - 3)
                rows = x[start:start + 1 + j % 3]
                reply = predict(client, digest, rows, deadline_s=30.0)
                with progress:
                    answered.append((i * per_client + j,
                                     reply.labels == servable.predict(rows).tolist()))
                    progress.notify_all()

        runner = threading.Thread(target=lambda: errors.extend(
            run_clients(cluster.coordinator.address, 16, work)))
        errors: list = []
        runner.start()
        with progress:  # kill once the clients are well under way
            assert progress.wait_for(lambda: len(answered) >= 120, timeout=60)
        cluster.nodes[0].kill()
        runner.join(120)

        assert not errors, errors[:3]
        ids = [i for i, _ in answered]
        assert len(ids) == 16 * per_client and len(set(ids)) == len(ids)  # none lost, none twice
        assert all(ok for _, ok in answered)  # each answer is its own rows' labels
        log = cluster.coordinator.log()
        assert "event=node_dead" in log
    finally:
        cluster.stop()


def test_a_full_queue_answers_overloaded_and_the_server_keeps_serving(tmp_path, models, data):
    # No node at first: an admitted request waits for one, holding its rows in the queue.
    cluster = start_cluster(tmp_path, 0, "--max-queued-rows", "8")
    try:
        servable, blob = models["fedavg"]
        digest = rpc(cluster.coordinator, lambda c: c.put_model(blob, "f.npz", "")).digest
        held_rows = data.validate.x[:8]
        began = time.monotonic()
        with pytest.raises((DeadlineExceeded, NoNodesAvailable)):  # every request has a deadline
            rpc(cluster.coordinator, lambda c: predict(c, digest, held_rows, deadline_s=0.3))
        assert time.monotonic() - began < 2.0
        wait_for(lambda: rpc(cluster.coordinator, lambda c: c.status("")).counters.get(
            "predict_rows_held") == 0, "the late request's rows stayed held")
        result: list = []

        holder = threading.Thread(target=lambda: result.append(rpc(
            cluster.coordinator, lambda c: predict(c, digest, held_rows, deadline_s=60.0))))
        holder.start()
        wait_for(lambda: rpc(cluster.coordinator, lambda c: c.status("")).counters.get(
            "predict_rows_held") == 8, "the 8 rows were never held")

        began = time.monotonic()
        with pytest.raises(Overloaded) as overloaded:
            rpc(cluster.coordinator, lambda c: predict(c, digest, held_rows[:1]))
        assert time.monotonic() - began < 2.0  # at once, not at the deadline
        assert overloaded.value.retry_after_s > 0
        assert "--max-queued-rows" in overloaded.value.message

        node = cluster.add_node(0.0, *NODE_ARGS)
        rpc(cluster.coordinator, lambda c: c.register_node(node.address.host,
                                                           node.address.port, ""))
        holder.join(60)

        assert result and result[0].labels == servable.predict(held_rows).tolist()
        again = rpc(cluster.coordinator, lambda c: predict(c, digest, held_rows))
        assert again.labels == servable.predict(held_rows).tolist()
    finally:
        cluster.stop()
