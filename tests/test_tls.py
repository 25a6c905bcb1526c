"""TLS on every hop, on real processes: client -> coordinator -> nodes, node -> coordinator.

Certificates are made for each run with the openssl command (a throwaway CA, server
certificates for IP:127.0.0.1). Every server gets --tls-cert/--tls-key/--tls-ca, so the
cluster is mutual TLS throughout.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from thrift.transport.TTransport import TTransportException

import idl.rpc
import letters
from client.status import fetch_status
from harness import REPO, LocalCluster, Pki, throwaway_pki
from idl.gen import ComputeNode
from idl.rpc import Address, connect
from idl.tls import TlsFiles, client_context, server_context

TRAIN = ["2", "3", "8", "1e-4", "--seed", "7"]  # ROUNDS EPOCHS H ETA: small, any result will do


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    openssl = shutil.which("openssl")
    require(openssl, "the openssl command is needed to make the test certificates")
    return throwaway_pki(tmp_path_factory.mktemp("pki"), openssl)


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki, tmp_path_factory) -> Iterator[LocalCluster]:
    """A coordinator and two nodes, all with the server certificate and the CA: mutual TLS."""
    cluster = LocalCluster(tmp_path_factory.mktemp("tls-cluster"), tls=pki.server)
    try:
        for _ in range(2):
            cluster.add_node(0.0, "--load-delay", "0")
        cluster.add_coordinator("round-robin")
        yield cluster
    finally:
        cluster.stop()


def client(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def train(cluster: LocalCluster, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    address = cluster.coordinator.address
    return client(address.host, str(address.port), str(letters.default_data_dir()), *TRAIN,
                  "--timing", str(workdir / "timing.txt"),
                  "--model-out", str(workdir / "model.npz"), *extra)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a failed command (no traceback)."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def status_ok(cluster: LocalCluster, files: TlsFiles) -> None:
    done = client("status", str(cluster.coordinator.address), *files.args())
    assert done.returncode == 0, done.stderr
    assert f"nodes {len(cluster.nodes)}/{len(cluster.nodes)} alive" in done.stdout


def test_a_tls_round_gives_the_same_weights_bit_for_bit_as_a_plain_one(
    tls_cluster, pki, make_cluster, tmp_path
):
    plain_dir, tls_dir = tmp_path / "plain", tmp_path / "tls"
    plain_dir.mkdir()
    tls_dir.mkdir()

    over_tls = train(tls_cluster, tls_dir, *pki.client.args())
    over_plain = train(make_cluster(nodes=2), plain_dir)

    assert over_tls.returncode == 0, over_tls.stderr
    assert over_plain.returncode == 0, over_plain.stderr
    with np.load(tls_dir / "model.npz") as a, np.load(plain_dir / "model.npz") as b:
        for name in ("w1", "b1", "w2", "b2"):
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
            assert a[name].tobytes() == b[name].tobytes(), name
    # Every hop was TLS: every server said so at start, and both nodes got shards.
    for proc in (tls_cluster.coordinator, *tls_cluster.nodes):
        assert "tls=mutual" in proc.log()
    assert all("event=shard_stored" in node.log() for node in tls_cluster.nodes)


def test_a_client_without_a_certificate_is_refused(tls_cluster, pki, tmp_path):
    only_ca = TlsFiles(ca=pki.server.ca)

    refused_round = train(tls_cluster, tmp_path, *only_ca.args())
    refused_status = client("status", str(tls_cluster.coordinator.address), *only_ca.args())

    for done in (refused_round, refused_status):
        assert "TLS" in one_line_error(done)
    assert not (tmp_path / "model.npz").exists()
    status_ok(tls_cluster, pki.client)


def test_a_client_certificate_from_another_ca_is_refused(tls_cluster, pki):
    done = client("status", str(tls_cluster.coordinator.address), *pki.stranger.args())

    assert "TLS" in one_line_error(done)
    status_ok(tls_cluster, pki.client)


def test_the_client_checks_the_servers_chain_and_name(tls_cluster, pki):
    wrong_ca = TlsFiles(pki.client.cert, pki.client.key, pki.other_ca)
    by_name = f"localhost:{tls_cluster.coordinator.address.port}"  # the SAN holds the IP only

    untrusted = client("status", str(tls_cluster.coordinator.address), *wrong_ca.args())
    misnamed = client("status", by_name, *pki.client.args())

    assert "certificate verify failed" in one_line_error(untrusted)
    assert "mismatch" in one_line_error(misnamed)


def test_a_plain_client_fails_cleanly_and_the_server_keeps_serving(tls_cluster, pki, tmp_path):
    plain_status = client("status", str(tls_cluster.coordinator.address))
    plain_round = train(tls_cluster, tmp_path)
    node = tls_cluster.nodes[0].address
    plain_to_node = client("status", str(node))  # a node is a TLS server too

    assert "--tls-ca" in one_line_error(plain_status)
    for done in (plain_round, plain_to_node):
        one_line_error(done)
    status_ok(tls_cluster, pki.client)
    assert "event=tls_handshake_failed" in tls_cluster.coordinator.log()


def test_a_tls_client_against_a_plain_server_fails_cleanly(pki, tmp_path):
    with LocalCluster(tmp_path) as plain:
        coordinator = plain.add_coordinator("round-robin", nodes=[])
        done = client("status", str(coordinator.address), *pki.client.args())
        still = client("status", str(coordinator.address))

    assert "does it serve TLS?" in one_line_error(done)
    assert still.returncode == 0, still.stderr


def test_a_node_registering_over_tls_shows_up_alive(pki, tmp_path):
    with LocalCluster(tmp_path, tls=pki.server) as cluster:
        coordinator = cluster.add_coordinator("round-robin", nodes=[])
        node = cluster.add_node(0.0, "--load-delay", "0", "--heartbeat-s", "0.2",
                                "--coordinator", str(coordinator.address))
        context = client_context(pki.client)
        deadline = time.monotonic() + 30
        while True:
            seen = {n.address: n.alive for n in fetch_status(coordinator.address, 5.0,
                                                             context).nodes or []}
            if seen.get(str(node.address)):
                break
            assert time.monotonic() < deadline, f"node never alive: {seen}\n{node.log()}"
            time.sleep(0.05)
        done = client("status", str(coordinator.address), *pki.client.args())

    assert done.returncode == 0, done.stderr
    assert "nodes 1/1 alive" in done.stdout and str(node.address) in done.stdout
    assert "event=registered" in node.log()


@pytest.mark.parametrize("command, files, says", [
    (["compute_node", "0", "0"], lambda p: ["--tls-cert", p.server.cert],
     "--tls-cert needs --tls-key"),
    (["coordinator", "0", "1"], lambda p: ["--tls-key", p.server.key],
     "--tls-key needs --tls-cert"),
    (["compute_node", "0", "0"], lambda p: ["--tls-ca", p.server.ca],
     "serving TLS needs --tls-cert and --tls-key"),
    (["coordinator", "0", "1"], lambda p: ["--tls-cert", p.server.cert.with_suffix(".ext"),
                                           "--tls-key", p.server.key],
     "no PEM certificate"),
    (["compute_node", "0", "0"], lambda p: ["--tls-cert", p.server.cert,
                                            "--tls-key", p.client.key],
     "not a PEM private key matching"),
    (["client", "status", "127.0.0.1:9"], lambda p: ["--tls-ca", p.server.key],
     "--tls-ca"),
    (["client", "status", "127.0.0.1:9"], lambda p: ["--tls-ca", p.server.ca.parent / "none"],
     "does not exist"),
])
def test_a_bad_tls_configuration_is_one_line_at_start(pki, tmp_path, command, files, says):
    argv = [sys.executable, "-m", *command, *map(str, files(pki))]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert says in one_line_error(done)


@pytest.fixture
def silent_server() -> Iterator[tuple[Address, list[socket.socket]]]:
    """A loopback listener that accepts and never writes; tests may wrap what it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield Address("127.0.0.1", listener.getsockname()[1]), accepted
    listener.close()
    for sock in accepted:
        sock.close()


def test_a_call_over_tls_times_out_at_its_timeout(pki, silent_server):
    # The plain client's kernel timeout (SO_RCVTIMEO) does not bound an SSLSocket's read.
    address, accepted = silent_server
    context = server_context(pki.server)
    result: list = []

    def handshake_then_nothing() -> None:
        while not accepted:
            time.sleep(0.01)
        result.append(context.wrap_socket(accepted[0], server_side=True))

    threading.Thread(target=handshake_then_nothing, daemon=True).start()
    conn = connect(ComputeNode.Client, address, 0.3, client_context(pki.client))
    started = time.monotonic()
    with pytest.raises(TTransportException) as failed:
        conn.client.ping()
    conn.close()

    assert failed.value.type == TTransportException.TIMED_OUT
    assert 0.25 < time.monotonic() - started < 3


def test_a_tls_handshake_with_a_silent_server_is_bounded(pki, silent_server, monkeypatch):
    monkeypatch.setattr(idl.rpc, "CONNECT_TIMEOUT_S", 0.3)
    started = time.monotonic()

    with pytest.raises(TTransportException, match="TLS handshake") as failed:
        connect(ComputeNode.Client, silent_server[0], 30.0, client_context(pki.client))

    assert isinstance(failed.value.inner, (TimeoutError, ssl.SSLError))
    assert time.monotonic() - started < 3
