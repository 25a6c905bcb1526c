"""The shared-secret token on every call of both services, with real processes on loopback.

The token here is deliberately not ASCII: tokens are compared as utf-8 bytes. Every RPC of
both services (enumerated from the generated code, so a new method cannot be forgotten)
refuses a missing or wrong token with Unauthorized; ping alone stays open for health
probes. No token, right or wrong, ever reaches a server's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import LocalCluster, ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    ClusterStatus,
    EvaluateRequest,
    InvalidRequest,
    ModelMissing,
    NodeLoad,
    NoNodesAvailable,
    PredictRequest,
    RoundRequest,
    ShardRef,
    ShardTask,
    TrainConfig,
    Unauthorized,
)
from idl.rpc import connect
from idl.tensors import encode_tensor, encode_tensors
from idl.weights import weights_digest
from mlcore.model import Params
from mlcore.servable import Servable, save_servable

TOKEN = "s3cr3t-Ünïcødé-令牌-🔑-" + secrets.token_hex(6)
WRONG = {
    "missing": "",
    "ascii": "WRONGTOKEN" + secrets.token_hex(6),
    "non-ascii": "wrøng-令牌-" + secrets.token_hex(6),
    "prefix": TOKEN[:-1],
}
OPEN = {"ping"}  # health probes: answers anyone, reveals nothing
D, H, K = 4, 3, 3
SHARD = b"".join(f"{i % 16},{(3 * i) % 16},{(5 * i) % 16},{(7 * i) % 16},{i % K}\n".encode()
                 for i in range(24))
DIGEST = hashlib.sha256(SHARD).hexdigest()


def methods(service) -> set[str]:
    """Every RPC of a service, as the generated Iface declares them."""
    return {name for name, _ in inspect.getmembers(service.Iface, inspect.isfunction)}


def weights() -> list:
    rng = np.random.default_rng(1)
    return encode_tensors([rng.uniform(-0.01, 0.01, s) for s in [(D, H), (H,), (H, K), (K,)]])


def model_file() -> bytes:
    """A small model file (d, h, k as the shard's), as a client would upload it."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"auth-model-{secrets.token_hex(4)}.npz"
    rng = np.random.default_rng(2)
    save_servable(path, Servable((Params(*(rng.uniform(-1, 1, s) for s in
                                           [(D, H), (H,), (H, K), (K,)])),)))
    try:
        return path.read_bytes()
    finally:
        path.unlink()


MODEL = model_file()
MODEL_DIGEST = hashlib.sha256(MODEL).hexdigest()


def predict_request(token: str) -> PredictRequest:
    return PredictRequest(model=MODEL_DIGEST, rows=encode_tensor(np.ones((2, D))), token=token)


def evaluate_request(token: str) -> EvaluateRequest:
    return EvaluateRequest(model=MODEL_DIGEST, shards=[shard_ref()], token=token)


def shard_ref() -> ShardRef:
    return ShardRef(name="train_0.txt", digest=DIGEST, n_rows=24, n_bytes=len(SHARD))


def shard_task(token: str) -> ShardTask:
    return ShardTask(job_id="auth", round=1, shard_index=0, shard=shard_ref(), weights=weights(),
                     config=TrainConfig(epochs=2, eta=1e-3), may_decline=False, timeout_s=30.0,
                     token=token)


def round_request(token: str) -> RoundRequest:
    return RoundRequest(job_id="auth", round=1, weights=weights(), shards=[shard_ref()],
                        config=TrainConfig(epochs=2, eta=1e-3), deadline_s=30.0, token=token)


# One call per RPC, with the token under test wherever the IDL carries it.
NODE_CALLS: dict[str, Callable[[str], Callable]] = {
    "load": lambda t: lambda c: c.load(t),
    "missing_shards": lambda t: lambda c: c.missing_shards([DIGEST], t),
    "put_shard": lambda t: lambda c: c.put_shard(DIGEST, SHARD, t),
    "train": lambda t: lambda c: c.train(shard_task(t)),
    "cancel": lambda t: lambda c: c.cancel("no-such-task", t),
    "missing_models": lambda t: lambda c: c.missing_models([MODEL_DIGEST], t),
    "put_model": lambda t: lambda c: c.put_model(MODEL_DIGEST, MODEL, t),
    "put_weights": lambda t: lambda c: c.put_weights(weights_digest(weights()), weights(), t),
    "predict": lambda t: lambda c: c.predict(predict_request(t)),
    "evaluate": lambda t: lambda c: c.evaluate(evaluate_request(t)),
}
COORDINATOR_CALLS: dict[str, Callable[[str], Callable]] = {
    "status": lambda t: lambda c: c.status(t),
    "missing_shards": lambda t: lambda c: c.missing_shards([DIGEST], t),
    "put_shard": lambda t: lambda c: c.put_shard(DIGEST, SHARD, t),
    "run_round": lambda t: lambda c: c.run_round(round_request(t)),
    "register_node": lambda t: lambda c: c.register_node("127.0.0.1", 1, t),
    "put_model": lambda t: lambda c: c.put_model(MODEL, "auth.npz", t),
    "missing_models": lambda t: lambda c: c.missing_models([MODEL_DIGEST], t),
    "list_models": lambda t: lambda c: c.list_models(t),
    "predict": lambda t: lambda c: c.predict(predict_request(t)),
    "evaluate": lambda t: lambda c: c.evaluate(evaluate_request(t)),
}
SERVICES = {"node": (ComputeNode, NODE_CALLS), "coordinator": (Coordinator, COORDINATOR_CALLS)}


def call(proc: ServerProcess, service, fn: Callable, timeout_s: float = 30.0):
    conn = connect(service.Client, proc.address, timeout_s)
    try:
        return fn(conn.client)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[LocalCluster]:
    """A coordinator and two nodes sharing TOKEN: from a file, and from FEDCLUSTER_TOKEN."""
    workdir = tmp_path_factory.mktemp("auth")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    cluster = LocalCluster(workdir)
    try:
        cluster.add_node(0.0, "--load-delay", "0", "--token-file", str(token_file))
        saved = os.environ.get("FEDCLUSTER_TOKEN")
        os.environ["FEDCLUSTER_TOKEN"] = TOKEN
        try:
            cluster.add_node(0.0, "--load-delay", "0")
        finally:
            if saved is None:
                del os.environ["FEDCLUSTER_TOKEN"]
            else:
                os.environ["FEDCLUSTER_TOKEN"] = saved
        cluster.add_coordinator("round-robin", "--token-file", str(token_file))
        yield cluster
    finally:
        cluster.stop()


def server(cluster: LocalCluster, kind: str) -> ServerProcess:
    return cluster.coordinator if kind == "coordinator" else cluster.nodes[0]


def test_the_call_tables_cover_every_rpc_of_both_services():
    for service, calls in SERVICES.values():
        assert set(calls) == methods(service) - OPEN, "an RPC is missing from the auth tests"
        assert methods(service) >= OPEN


@pytest.mark.parametrize("wrong", sorted(WRONG))
@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_every_call_without_the_right_token_is_unauthorized(secured, kind, wrong):
    service, calls = SERVICES[kind]
    proc = server(secured, kind)
    for name in sorted(calls):
        with pytest.raises(Unauthorized) as caught:
            call(proc, service, calls[name](WRONG[wrong]))
        assert "token missing or wrong" in caught.value.message, name
        assert WRONG[wrong] == "" or WRONG[wrong] not in caught.value.message


@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_ping_stays_open_for_health_probes(secured, kind):
    service, _ = SERVICES[kind]
    assert call(server(secured, kind), service, lambda c: c.ping()) is True


def test_every_node_call_works_with_the_right_token(secured):
    for node in secured.nodes:  # one read the token from a file, the other from the env
        assert isinstance(call(node, ComputeNode, NODE_CALLS["load"](TOKEN)), NodeLoad)
        call(node, ComputeNode, NODE_CALLS["put_shard"](TOKEN))
        assert call(node, ComputeNode, NODE_CALLS["missing_shards"](TOKEN)) == []
        assert call(node, ComputeNode, NODE_CALLS["train"](TOKEN)).n_samples == 24
        assert call(node, ComputeNode, NODE_CALLS["cancel"](TOKEN)) is False
        call(node, ComputeNode, NODE_CALLS["put_weights"](TOKEN))
        call(node, ComputeNode, NODE_CALLS["put_model"](TOKEN))
        assert call(node, ComputeNode, NODE_CALLS["missing_models"](TOKEN)) == []
        assert len(call(node, ComputeNode, NODE_CALLS["predict"](TOKEN)).labels) == 2
        assert call(node, ComputeNode, NODE_CALLS["evaluate"](TOKEN)).n_rows == 24


def test_every_coordinator_call_works_with_the_right_token(secured):
    coordinator = secured.coordinator
    call(coordinator, Coordinator, COORDINATOR_CALLS["put_shard"](TOKEN))
    assert call(coordinator, Coordinator, COORDINATOR_CALLS["missing_shards"](TOKEN)) == []
    result = call(coordinator, Coordinator, COORDINATOR_CALLS["run_round"](TOKEN))
    assert [r.n_samples for r in result.results] == [24]  # the coordinator's token on nodes
    call(coordinator, Coordinator, lambda c: c.register_node(
        "127.0.0.1", secured.nodes[0].address.port, TOKEN))
    status = call(coordinator, Coordinator, COORDINATOR_CALLS["status"](TOKEN))
    assert isinstance(status, ClusterStatus) and status.counters["nodes_alive"] >= 2
    assert call(coordinator, Coordinator, COORDINATOR_CALLS["put_model"](TOKEN)).n_features == D
    assert call(coordinator, Coordinator, COORDINATOR_CALLS["missing_models"](TOKEN)) == []
    assert [m.digest for m in call(coordinator, Coordinator,
                                   COORDINATOR_CALLS["list_models"](TOKEN))] == [MODEL_DIGEST]
    # the coordinator's token on nodes again: its model upload and the batch
    assert len(call(coordinator, Coordinator, COORDINATOR_CALLS["predict"](TOKEN)).labels) == 2
    assert call(coordinator, Coordinator, COORDINATOR_CALLS["evaluate"](TOKEN)).n_rows == 24


def test_no_token_ever_reaches_a_log_and_nothing_breaks(secured):
    # Make sure both kinds of call happened in this test too, whatever ran before.
    targets = [(secured.coordinator, "coordinator"), *((n, "node") for n in secured.nodes)]
    for proc, kind in targets:
        service, calls = SERVICES[kind]
        for token in (*WRONG.values(), TOKEN):
            for name in sorted(calls):
                with contextlib.suppress(Unauthorized, InvalidRequest, ModelMissing):
                    call(proc, service, calls[name](token))
    for proc in [secured.coordinator, *secured.nodes]:
        raw = proc.log_path.read_bytes()
        for token in [TOKEN, *(t for t in WRONG.values() if t)]:
            assert token.encode() not in raw, f"a token in {proc.log_path.name}"
        log = raw.decode(errors="replace")
        assert "call_denied" in log  # the refusals are logged, just not what was sent
        assert "Traceback" not in log and "internal error" not in log.lower()


def test_a_node_refusing_the_coordinators_token_fails_the_round_as_a_configuration_error(
    make_cluster,
):
    cluster = make_cluster(nodes=2, node_args=("--load-delay", "0", "--token", "node-side-ß"),
                           coordinator_args=("--token", "coordinator-side-ß"))
    coordinator = cluster.coordinator
    call(coordinator, Coordinator, lambda c: c.put_shard(DIGEST, SHARD, "coordinator-side-ß"))

    with pytest.raises(NoNodesAvailable) as caught:
        call(coordinator, Coordinator, COORDINATOR_CALLS["run_round"]("coordinator-side-ß"))

    message = caught.value.message
    assert "refused the coordinator's token" in message
    assert any(f"node {n.address} refused" in message for n in cluster.nodes)
    status = call(coordinator, Coordinator, lambda c: c.status("coordinator-side-ß"))
    assert status.counters.get("failures", 0) == 0  # not retried as a node failure
    assert status.counters.get("retries", 0) == 0
    assert all(n.alive for n in status.nodes)
    assert "node-side-ß" not in coordinator.log() and "coordinator-side-ß" not in coordinator.log()


def test_register_node_is_authenticated_and_bounded(make_cluster):
    cluster = make_cluster(nodes=0, coordinator_args=("--token", TOKEN, "--max-nodes", "2",
                                                      "--heartbeat-s", "60"))
    coordinator = cluster.coordinator

    def register(host: str, port: int, token: str = TOKEN) -> None:
        call(coordinator, Coordinator, lambda c: c.register_node(host, port, token))

    with pytest.raises(Unauthorized):
        register("127.0.0.1", 20001, "")
    register("127.0.0.1", 20001)
    register("node-b.example", 20002)
    register("127.0.0.1", 20001)  # a known node's heartbeat is always welcome
    with pytest.raises(InvalidRequest, match=r"maximum \(--max-nodes 2\)"):
        register("127.0.0.1", 20003)
    for host, port, reason in [
        ("bad host!", 9091, "IP address or a DNS name"),
        ("", 9091, "IP address or a DNS name"),
        ("a" * 300, 9091, "IP address or a DNS name"),
        ("-leading.example", 9091, "IP address or a DNS name"),
        ("127.0.0.1", 0, "1..65535"),
        ("127.0.0.1", 70000, "1..65535"),
        ("127.0.0.1", -1, "1..65535"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            register(host, port)
    status = call(coordinator, Coordinator, lambda c: c.status(TOKEN))
    assert sorted(n.address for n in status.nodes) == ["127.0.0.1:20001", "node-b.example:20002"]
    assert status.counters["registrations_refused"] == 1


# ------------------------------------------------------------------ the commands' token options


def run_client(args: list[str], env_token: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEDCLUSTER_TOKEN"}
    if env_token is not None:
        env["FEDCLUSTER_TOKEN"] = env_token
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_client_status_sends_the_token_from_the_env_or_a_file(secured, tmp_path):
    address = str(secured.coordinator.address)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")

    by_env = run_client(["status", address], TOKEN, tmp_path)
    by_file = run_client(["status", address, "--token-file", str(token_file)], None, tmp_path)
    refused = run_client(["status", address], None, tmp_path)
    both = run_client(["status", address, "--token-file", str(token_file), "--token", "x"],
                      None, tmp_path)

    for done in (by_env, by_file):
        assert done.returncode == 0, done.stderr
        assert f"coordinator {address}" in done.stdout
        assert str(secured.nodes[0].address) in done.stdout
    assert "refused" in one_line_error(refused) and "token missing or wrong" in refused.stderr
    assert "not both" in one_line_error(both)


def write_data_dir(path: Path) -> Path:
    path.mkdir()
    rng = np.random.default_rng(3)
    for name, n in [("train_1.txt", 30), ("train_2.txt", 30), ("validate_x.txt", 20)]:
        rows = [",".join(map(str, [*rng.integers(0, 16, D), rng.integers(0, K)])) for _ in range(n)]
        (path / name).write_text("\n".join(rows) + "\n")
    return path


def test_training_client_sends_the_token_on_every_call(secured, tmp_path):
    data = write_data_dir(tmp_path / "data")
    host, port = secured.coordinator.address.host, str(secured.coordinator.address.port)
    args = [host, port, str(data), "2", "3", "4", "0.001", "--timing", str(tmp_path / "t.txt")]

    trained = run_client(args, TOKEN, tmp_path)
    refused = run_client(args, "wrong-" + secrets.token_hex(4), tmp_path)

    assert trained.returncode == 0, trained.stderr
    assert "final validation error" in trained.stdout
    assert "refused" in one_line_error(refused)
    assert TOKEN not in (tmp_path / "t.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", ["compute_node", "coordinator"])
def test_servers_refuse_an_empty_token_file_at_start(command, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    argv = [sys.executable, "-m", command, "0", "0" if command == "compute_node" else "1",
            "--token-file", str(empty)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "is empty" in one_line_error(done)

