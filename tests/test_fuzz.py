"""Thousands of hostile messages cannot kill, hang or bloat a server, nor change a later round.

A real compute node and a real coordinator (processes on loopback) each receive a seeded
stream of inputs built from valid calls of every method of their service (tests/fuzz_inputs.py):
bytes flipped, fields cut short, string/list/map/frame lengths forged, types swapped, frames
truncated or oversized, garbage, wrong method names, message types and sequence ids. Some go
down one long-lived connection, the rest each on a fresh one. After every batch the process
must be alive and answer ping; its resident memory is sampled all along; no reply may be an
INTERNAL_ERROR (a handler failure that no declared exception covers); and a connection the
client has finished with must be closed by the server, not left hanging. Afterwards a real
client round through the fuzzed coordinator and node must give bitwise the weights of the
same round on a fresh cluster.

Reproduce a failure with the seed it prints: FEDCLUSTER_FUZZ_SEED=<seed> pytest tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fuzz_inputs import HOSTILE_TENSORS, FuzzInput, Mutator, service_calls
from test_training_e2e import model_bytes, run_client
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TException, TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer

import idl.framing
from harness import LocalCluster, ServerProcess
from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import Tensor
from idl.protocol import protocol_factory
from idl.rpc import connect
from idl.tensors import TensorError, decode_tensor

SEED = int(os.environ.get("FEDCLUSTER_FUZZ_SEED", "20261210"))
INPUTS_PER_SERVER = int(os.environ.get("FEDCLUSTER_FUZZ_INPUTS", "12000"))
BATCH = 250
REUSED_SHARE = 0.5  # of the inputs made of whole frames; the others go on fresh connections
# A reused connection with no reply by then is taken to wait for more bytes and is shut; a
# reply that was merely slow is still read while draining, so a short wait loses nothing.
REPLY_WAIT_S = 0.01
HANG_S = 10.0  # after our end is shut, the server must close within this
MAX_FRAME_BYTES = getattr(idl.framing, "MAX_MESSAGE_BYTES", 256 * 1024 * 1024)
# No input is longer than a few KiB, and a frame's buffer grows only as its bytes arrive
# (idl/framing.py), so the `huge_claim` inputs (a length prefix of 128-256 MB, then 16 bytes)
# must cost nothing. What fuzzing may leave behind is bounded by the servers' own caches:
# uploaded shards (under 2 MB from all the put_shard inputs together) and at most --max-nodes
# registry entries. 64 MiB covers that, allocator arenas and connection threads' stacks;
# a frame allocated from its announced length alone would overshoot it fourfold.
RSS_LIMIT_BYTES = 64 * 1024 * 1024
ROUND_ARGS = ["2", "5", "8", "1e-4"]
NODE_ARGS = ("--load-delay", "0", "--seed", "1")
COORDINATOR_ARGS = ("--heartbeat-s", "0.2", "--seed", "1")
FRAME = struct.Struct("!i")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssWatch:
    """Samples each process's VmRSS every few milliseconds on a thread; keeps the peaks."""

    def __init__(self, pids: list[int]) -> None:
        self.baseline = {pid: rss_bytes(pid) for pid in pids}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for pid in self.peak:
                # A process that died is reported by the liveness check, not here.
                with contextlib.suppress(OSError, AssertionError):
                    self.peak[pid] = max(self.peak[pid], rss_bytes(pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Findings:
    """What one server did with the inputs; `bugs` must stay empty."""

    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)
    reply_kinds: Counter = field(default_factory=Counter)
    bugs: list[str] = field(default_factory=list)

    def bug(self, what: str, item: FuzzInput) -> None:
        more = "..." if len(item.payload) > 600 else ""
        self.bugs.append(f"{what}: kind={item.kind} method={item.method or '-'} "
                         f"payload={item.payload[:600].hex()}{more}")


def read_replies(data: bytes, item: FuzzInput, findings: Findings) -> None:
    """Look at every whole reply frame in `data`; an INTERNAL_ERROR is a bug."""
    at = 0
    while at + 4 <= len(data):
        (size,) = FRAME.unpack_from(data, at)
        body = data[at + 4:at + 4 + size]
        if size < 0 or len(body) < size:
            findings.bug(f"malformed reply frame (size {size})", item)
            return
        at += 4 + size
        proto = TBinaryProtocol(TMemoryBuffer(body))
        _, mtype, _ = proto.readMessageBegin()
        if mtype != TMessageType.EXCEPTION:
            findings.reply_kinds["reply"] += 1
            continue
        error = TApplicationException()
        error.read(proto)
        findings.reply_kinds[f"exception:{error.type}"] += 1
        if error.type == TApplicationException.INTERNAL_ERROR:
            findings.bug(f"INTERNAL_ERROR on the wire ({error.message})", item)


def drain_to_close(sock: socket.socket, item: FuzzInput, findings: Findings) -> bytes:
    """Shut our end, read until the server closes; a server that does not close is a bug."""
    with contextlib.suppress(OSError):  # already reset by the server
        sock.shutdown(socket.SHUT_WR)
    sock.settimeout(HANG_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        findings.bug(f"server kept the connection open {HANG_S}s after our end was shut", item)
    except OSError:
        pass  # reset by the server: closed, which is what we wait for
    finally:
        sock.close()
    return received


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Exactly n bytes, or None at EOF or reset."""
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


class Fuzzer:
    """Sends the inputs to one server, over one reused connection and many fresh ones."""

    def __init__(self, server: ServerProcess, findings: Findings) -> None:
        self.address = (server.address.host, server.address.port)
        self.findings = findings
        self._reused: socket.socket | None = None

    def _open(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=HANG_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send_fresh(self, item: FuzzInput) -> None:
        sock = self._open()
        with contextlib.suppress(OSError):  # the server closed before taking it all: allowed
            sock.sendall(item.payload)
        received = drain_to_close(sock, item, self.findings)
        read_replies(received, item, self.findings)
        self.findings.outcomes["fresh"] += 1

    def send_reused(self, item: FuzzInput) -> None:
        """One whole frame on the long-lived connection: a reply, a close, or a wait."""
        if self._reused is None:
            self._reused = self._open()
        sock = self._reused
        try:
            sock.sendall(item.payload)
            sock.settimeout(REPLY_WAIT_S)
            head = recv_exact(sock, 4)
        except TimeoutError:  # the server reads on into the next frame: end it cleanly
            self._reused = None
            read_replies(drain_to_close(sock, item, self.findings), item, self.findings)
            self.findings.outcomes["reused_waiting"] += 1
            return
        except OSError:
            head = None
        if head is None:  # the server closed this connection (a malformed message)
            self._reused = None
            sock.close()
            self.findings.outcomes["reused_closed"] += 1
            return
        sock.settimeout(HANG_S)
        (size,) = FRAME.unpack(head)
        body = recv_exact(sock, size) if 0 <= size < MAX_FRAME_BYTES else None
        if body is None:
            self.findings.bug(f"reply frame of {size} bytes cut short", item)
            self._reused = None
            sock.close()
            return
        read_replies(head + body, item, self.findings)
        self.findings.outcomes["reused_replied"] += 1

    def close(self) -> None:
        if self._reused is not None:
            self._reused.close()
            self._reused = None


def ping(server: ServerProcess, client_cls: type) -> bool:
    conn = connect(client_cls, server.address, timeout_s=HANG_S)
    try:
        return conn.client.ping()
    finally:
        conn.close()


def fuzz_server(server: ServerProcess, client_cls: type, service: object, seed: int,
                findings: Findings) -> None:
    """Send INPUTS_PER_SERVER inputs; after every batch the server must be alive and answer."""
    rng = random.Random(seed)
    mutator = Mutator(rng, service_calls(service), MAX_FRAME_BYTES)
    fuzzer = Fuzzer(server, findings)
    try:
        for start in range(0, INPUTS_PER_SERVER, BATCH):
            for _ in range(min(BATCH, INPUTS_PER_SERVER - start)):
                item = mutator.next()
                if item.whole_frames and rng.random() < REUSED_SHARE:
                    fuzzer.send_reused(item)
                else:
                    fuzzer.send_fresh(item)
                findings.sent += 1
            if server.popen.poll() is not None:
                findings.bugs.append(f"died with {server.popen.returncode} in the batch "
                                     f"ending at input {findings.sent}")
                return
            if ping(server, client_cls) is not True:
                findings.bugs.append(f"ping did not answer True after input {findings.sent}")
                return
    finally:
        fuzzer.close()


def wait_only_real_nodes_alive(coordinator: ServerProcess, real: set[str]) -> int:
    """Poll status until every node the fuzzer registered is marked dead; returns their count."""
    deadline = time.monotonic() + 60.0
    while True:
        conn = connect(Coordinator.Client, coordinator.address, timeout_s=HANG_S)
        try:
            nodes = conn.client.status("").nodes
        finally:
            conn.close()
        alive = {n.address for n in nodes if n.alive}
        if alive == real:
            return len(nodes) - len(real)
        if time.monotonic() > deadline:
            raise AssertionError(f"registered fakes still alive after 60 s: {alive - real}")
        time.sleep(0.05)


def start_cluster(workdir: Path) -> LocalCluster:
    cluster = LocalCluster(workdir)
    try:
        cluster.add_node(0.0, *NODE_ARGS)
        cluster.add_coordinator("round-robin", *COORDINATOR_ARGS)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.mark.slow
def test_servers_survive_fuzzing_and_train_the_same_round_afterwards(tmp_path: Path) -> None:
    print(f"fuzz seed {SEED} (set FEDCLUSTER_FUZZ_SEED to repeat), "
          f"{INPUTS_PER_SERVER} inputs per server")
    started = time.monotonic()
    with start_cluster(tmp_path / "fresh") as fresh:
        done = run_client(fresh.coordinator, tmp_path / "fresh-run", train_args=ROUND_ARGS)
    assert done.returncode == 0, done.stderr
    print(f"reference round on a fresh cluster: {time.monotonic() - started:.1f}s")
    reference = model_bytes(tmp_path / "fresh-run" / "model.npz")

    with start_cluster(tmp_path / "fuzzed") as cluster:
        node, coordinator = cluster.nodes[0], cluster.coordinator
        targets = [(node, ComputeNode.Client, ComputeNode, SEED),
                   (coordinator, Coordinator.Client, Coordinator, SEED + 1)]
        findings = [Findings() for _ in targets]
        started = time.monotonic()
        with RssWatch([node.pid, coordinator.pid]) as rss:
            threads = [threading.Thread(target=fuzz_server, args=(*t, f))
                       for t, f in zip(targets, findings, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        fuzz_s = time.monotonic() - started

        for (server, *_), found in zip(targets, findings, strict=True):
            name = Path(server.argv[2]).name
            print(f"{name}: {found.sent} inputs, {dict(found.outcomes)}, replies "
                  f"{dict(found.reply_kinds)}, RSS {rss.baseline[server.pid] / 2**20:.0f} MiB "
                  f"-> peak {rss.peak[server.pid] / 2**20:.0f} MiB")
        total = sum(f.sent for f in findings)
        print(f"fuzzed {total} inputs in {fuzz_s:.1f}s (seed {SEED})")
        bugs = [f"{Path(t[0].argv[2]).name}: {b}" for t, f in zip(targets, findings, strict=True)
                for b in f.bugs]
        assert not bugs, f"seed {SEED}:\n" + "\n".join(bugs[:10]) + "\n--- node log:\n" + \
            node.log()[-4000:] + "\n--- coordinator log:\n" + coordinator.log()[-4000:]
        for server in (node, coordinator):
            limit = rss.baseline[server.pid] + RSS_LIMIT_BYTES
            assert rss.peak[server.pid] < limit, (
                f"seed {SEED}: {server.argv[2]} peaked at {rss.peak[server.pid]} bytes, "
                f"limit {limit}")

        started = time.monotonic()
        fakes = wait_only_real_nodes_alive(coordinator, {str(node.address)})
        waited_s = time.monotonic() - started
        done = run_client(coordinator, tmp_path / "fuzzed-run", train_args=ROUND_ARGS)
        assert done.returncode == 0, done.stderr
        print(f"legitimate round after fuzzing: {fakes} fake nodes registered, all marked "
              f"dead {waited_s:.1f}s after the last input; round took "
              f"{time.monotonic() - started - waited_s:.1f}s")

    assert model_bytes(tmp_path / "fuzzed-run" / "model.npz") == reference, f"seed {SEED}"


@pytest.mark.parametrize(("shape", "data"), HOSTILE_TENSORS, ids=lambda v: repr(v)[:24])
def test_a_hostile_tensor_is_a_tensor_error_or_decodes(shape: tuple, data: bytes) -> None:
    try:
        array = decode_tensor(Tensor(shape=list(shape), data=data), writable=False)
    except TensorError:
        return
    assert array.shape == shape and array.nbytes == len(data)


@pytest.mark.parametrize("service", [ComputeNode, Coordinator], ids=lambda s: s.__name__)
def test_a_malformed_message_is_a_thrift_error_in_the_protocol(service: object) -> None:
    """Whatever the bytes, decoding raises a TException (INVALID_DATA, ...), nothing else.

    EOFError is the C codec running out of this in-memory buffer; on a connection it would
    wait for the next frame instead.
    """
    calls = service_calls(service)
    mutator = Mutator(random.Random(SEED), calls, MAX_FRAME_BYTES)
    n_errors = 0
    for _ in range(3000):
        item = mutator.next()
        body = item.payload[4:] if item.whole_frames else item.payload
        proto = protocol_factory().getProtocol(TMemoryBuffer(body))
        try:
            name, _, _ = proto.readMessageBegin()
            args_cls = calls.get(name)
            if args_cls is None:
                proto.skip(TType.STRUCT)
            else:
                args_cls().read(proto)
        except (TException, EOFError):
            n_errors += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"seed {SEED}: {item.kind} {item.payload.hex()} raised "
                                 f"{exc!r}, not a TException") from exc
    assert n_errors > 300  # the mutations do reach the decoder's error paths
