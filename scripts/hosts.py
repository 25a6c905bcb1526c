"""Emulated hosts on a shaped network: each in a network namespace of its own, on one bridge.

Used by tests/test_multihost.py and scripts/bench_wan.py (Linux, root, iproute2). A
`Network` makes, inside this sandbox and under names unique to the run:

- a switch namespace `fc<tag>-sw` holding the bridge `br0`;
- one namespace `fc<tag>-<host>` per host, with `eth0` (10.<a>.<b>.<n>/24) wired to the
  bridge by a veth pair whose switch end is `v-<host>`;
- one control link `fc<tag>c` in the calling namespace (10.<a>.<b>.254, unshaped), so the
  test or benchmark can ping servers and read their status.

Links are shaped so (`Shape`):

- rate: `tbf` on both ends of a host's veth (its egress on `eth0`, its ingress as the
  egress of `v-<host>`), so each direction of a link carries at most `rate_bit_s`;
- delay and jitter: no `sch_netem` here, so a server host gets a relay in its namespace
  (`relay_main`, a userspace TCP proxy) on its public address, in front of the server
  bound to the namespace's own loopback. Each chunk waits RTT/2 ± jitter in each
  direction, in order (a TCP stream never reorders), and the first bytes of a connection
  wait one RTT more, the cost of the handshake the relay answered at once;
- loss: packets dropped at random on `eth0` by an nftables rule (`numgen random`) when the
  `nft` command is installed, which real TCP then recovers from by retransmission; without
  it the relay stalls the given fraction of chunks by a retransmission timeout (200 ms +
  RTT), what a lost segment costs a TCP stream;
- netem (delay, jitter and loss in the kernel) is used instead wherever the kernel has it.

Only what the Network made is ever changed or deleted; `close()` (also on failure, as a
context manager) deletes the namespaces and the control link, which takes everything in
them along. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from local_cluster import REPO, ServerProcess, _read_ready_line

from idl.gen import ComputeNode, Coordinator
from idl.rpc import Address, connect, wait_until_ready

SCRIPTS = Path(__file__).resolve().parent
READY_TIMEOUT_S = 60.0
RTO_S = 0.2  # Linux's minimum retransmission timeout: what a lost segment stalls a stream
CHUNK = 65536


@dataclass(frozen=True)
class Shape:
    """One host's link: round trip added in front of its servers, jitter, loss, rate."""

    rtt_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0  # fraction of packets (nft/netem) or chunks (relay) lost
    rate_bit_s: float | None = None  # None: unshaped

    def describe(self) -> str:
        rate = "unshaped" if self.rate_bit_s is None else f"{self.rate_bit_s / 1e6:g} Mbit/s"
        return (f"rtt={self.rtt_s * 1000:g}ms jitter={self.jitter_s * 1000:g}ms "
                f"loss={self.loss:g} rate={rate}")


def why_not() -> str | None:
    """Why this machine cannot make hosts, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is not installed"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    """A host: its namespace, address and the link that joins it to the bridge."""

    name: str
    netns: str
    ip: str
    switch_if: str
    shape: Shape = Shape()
    relay: ServerProcess | None = None
    processes: list[ServerProcess] = field(default_factory=list)

    def argv(self, *command: str) -> list[str]:
        """`command` run inside this host (`ip netns exec` execs it: the PID is the command's)."""
        return ["ip", "netns", "exec", self.netns, *command]


class Network:
    """Hosts on one bridge in namespaces of their own; a context manager that cleans up."""

    def __init__(self, workdir: Path, loss_by: str | None = None) -> None:
        """`loss_by` ("nft" or "relay") overrides the choice of how loss is emulated."""
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"fc{self.tag}-sw"
        self.control_if = f"fc{self.tag}c"
        self.subnet = _free_subnet()
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self.control_made = False
        netem = _has_netem()
        self.loss_by = loss_by or ("netem" if netem else "nft" if shutil.which("nft") else "relay")
        self.delay_by = "netem" if netem else "relay"

    # ------------------------------------------------------------------ building

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create(self) -> None:
        """The switch namespace, its bridge, and the control link from this namespace."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._add_netns(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        _run("ip", "link", "add", self.control_if, "type", "veth", "peer", "name", "v-control",
             "netns", self.switch)
        self.control_made = True
        _run("ip", "-n", self.switch, "link", "set", "v-control", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self._ip(254)}/24", "dev", self.control_if)
        _run("ip", "link", "set", self.control_if, "up")

    def add_host(self, name: str, shape: Shape = Shape()) -> Host:
        """A new host on the bridge, its link shaped by `shape`."""
        index = len(self.hosts) + 1
        host = Host(name, f"fc{self.tag}-{name}", self._ip(index), f"v-{name}"[:15])
        self._add_netns(host.netns)
        _run("ip", "-n", host.netns, "link", "add", "eth0", "type", "veth", "peer", "name",
             host.switch_if, "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", host.switch_if, "master", "br0", "up")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", host.netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        self.reshape(host, shape)
        return host

    def reshape(self, host: Host, shape: Shape) -> None:
        """Set the link's rate (tbf), and its loss where nft or netem does it (not the relay)."""
        host.shape = shape
        for ns, dev in ((host.netns, "eth0"), (self.switch, host.switch_if)):
            _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            netem = []
            if self.delay_by == "netem" and (shape.rtt_s or shape.loss):
                netem = ["delay", f"{shape.rtt_s / 2 * 1e6:.0f}us",
                         f"{shape.jitter_s * 1e6:.0f}us", "loss", f"{shape.loss * 100:g}%"]
                if shape.rate_bit_s:
                    netem += ["rate", f"{shape.rate_bit_s:.0f}bit"]
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", *netem)
            elif shape.rate_bit_s:
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *_tbf(shape.rate_bit_s))
        if self.loss_by == "nft":
            _nft(host.netns, shape.loss)

    def cut(self, host: Host) -> None:
        """Take the host's link down: its processes live on, nothing reaches them."""
        _run("ip", "-n", self.switch, "link", "set", host.switch_if, "down")

    def close(self) -> None:
        """Stop every process started here, then delete every namespace and link made here."""
        everyone = [p for h in self.hosts.values() for p in (*h.processes, h.relay) if p]
        for proc in everyone:
            proc.terminate()
        for proc in everyone:
            with contextlib.suppress(Exception):
                proc.stop()
        if self.control_made:
            _run("ip", "link", "del", self.control_if, check=False)  # takes its peer along
            self.control_made = False
        for ns in reversed(self.namespaces):  # deleting a namespace deletes its links
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    # ------------------------------------------------------------------ servers

    def start_node(self, host: Host, *extra: str) -> ServerProcess:
        """A compute node on the host's loopback behind its relay; the address is the relay's."""
        node = self._start(host, "compute_node", ["0", "0.0", "--host", "127.0.0.1", *extra])
        self._start_relay(host, node)
        node.address = host.relay.address if host.relay else node.address
        _wait_ping(ComputeNode.Client, node.address)
        return node

    def start_coordinator(self, host: Host, policy: str, nodes: list[Address],
                          *extra: str) -> ServerProcess:
        """A coordinator on the host's own address (its link: rate and loss, no relay)."""
        nodes_file = self.workdir / f"compute_nodes-{host.name}.txt"
        nodes_file.write_text("".join(f"{a.host},{a.port}\n" for a in nodes))
        coordinator = self._start(host, "coordinator", ["0", policy, "--host", host.ip,
                                                        "--nodes", str(nodes_file), *extra])
        _wait_ping(Coordinator.Client, coordinator.address)
        return coordinator

    def client_argv(self, host: Host, coordinator: Address, *args: str) -> list[str]:
        """The client command run on `host` against `coordinator`."""
        return host.argv(sys.executable, "-m", "client", coordinator.host,
                         str(coordinator.port), *args)

    def link_bytes(self, host: Host) -> tuple[int, int]:
        """Bytes the host's link has carried so far: (to the host, from the host)."""
        done = _run("ip", "-j", "-s", "-n", self.switch, "link", "show", "dev", host.switch_if)
        stats = json.loads(done.stdout)[0]["stats64"]
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])

    def dropped_packets(self, host: Host) -> int | None:
        """Packets the host's nft loss rules have dropped (None where loss is not nft's)."""
        if self.loss_by != "nft":
            return None
        done = _run("ip", "netns", "exec", host.netns, "nft", "-j", "list", "table", "inet",
                    "fcloss", check=False)
        if done.returncode != 0:
            return 0
        total = 0
        for item in json.loads(done.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                total += int(expr.get("counter", {}).get("packets", 0))
        return total

    def _start(self, host: Host, module: str, args: list[str]) -> ServerProcess:
        log_path = self.workdir / f"{module}-{host.name}.log"
        argv = host.argv(sys.executable, "-m", module, *args)
        proc = _spawn(argv, log_path)
        host.processes.append(proc)
        return proc

    def _start_relay(self, host: Host, server: ServerProcess) -> None:
        shape = host.shape
        delay_rtt = shape.rtt_s if self.delay_by == "relay" else 0.0
        jitter = shape.jitter_s if self.delay_by == "relay" else 0.0
        loss = shape.loss if self.loss_by == "relay" else 0.0
        window = max(8 << 20, int((shape.rate_bit_s or 1e9) / 8 * max(delay_rtt, 0.01) * 2))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import hosts; "
                "hosts.relay_main(sys.argv[2:])")
        argv = host.argv(sys.executable, "-c", code, str(SCRIPTS), f"{host.ip}:0",
                         str(server.address), str(delay_rtt), str(jitter), str(loss),
                         str(window), str(random.randrange(1 << 30)))
        host.relay = _spawn(argv, self.workdir / f"relay-{host.name}.log")

    # ------------------------------------------------------------------ helpers

    def _add_netns(self, name: str) -> None:
        done = _run("ip", "netns", "add", name, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cannot create network namespace {name}: {done.stderr.strip()}")
        self.namespaces.append(name)

    def _ip(self, index: int) -> str:
        return str(self.subnet.network_address + index)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.201-250.x.0 that no route of this namespace touches (bounded tries)."""
    routes = _run("ip", "-j", "route", "show", "table", "all", check=False).stdout or "[]"
    taken = []
    for route in json.loads(routes):
        with contextlib.suppress(ValueError):
            dst = route.get("dst", "")
            if dst and dst != "default":
                taken.append(ipaddress.ip_network(dst, strict=False))
    rng = random.Random()
    for _ in range(200):
        subnet = ipaddress.IPv4Network(f"10.{rng.randint(201, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(t) for t in taken if t.version == 4):
            return subnet
    raise RuntimeError("no free 10.201-250.x.0/24 subnet for the emulated hosts")


def _has_netem() -> bool:
    """True when the kernel has sch_netem (asked of a throwaway dummy link in a namespace)."""
    ns = f"fcprobe-{uuid.uuid4().hex[:6]}"
    if _run("ip", "netns", "add", ns, check=False).returncode != 0:
        return False
    try:
        _run("ip", "-n", ns, "link", "add", "d0", "type", "dummy", check=False)
        return _run("tc", "-n", ns, "qdisc", "add", "dev", "d0", "root", "netem", "delay",
                    "1ms", check=False).returncode == 0
    finally:
        _run("ip", "netns", "del", ns, check=False)


def _tbf(rate_bit_s: float) -> list[str]:
    """tbf arguments: the rate, a burst of 2 ms of it (at least 64 KiB: a GSO segment), and
    200 ms of queue, so TCP meets the rate and not a tail-drop cliff."""
    burst = max(64 * 1024, int(rate_bit_s / 8 * 0.002))
    return ["tbf", "rate", f"{rate_bit_s:.0f}bit", "burst", str(burst), "latency", "200ms"]


def _nft(netns: str, loss: float) -> None:
    """Drop `loss` of the packets each way on the host's eth0 (none: remove the table)."""
    _run("ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "fcloss", check=False)
    if loss <= 0:
        return
    per_million = round(loss * 1_000_000)
    rules = (
        "table inet fcloss {\n"
        " chain in { type filter hook input priority 0; policy accept;\n"
        f"  iifname \"eth0\" numgen random mod 1000000 < {per_million} counter drop\n }}\n"
        " chain out { type filter hook output priority 0; policy accept;\n"
        f"  oifname \"eth0\" numgen random mod 1000000 < {per_million} counter drop\n }}\n"
        "}\n"
    )
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=rules,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {done.stderr.strip()}")


def _spawn(argv: list[str], log_path: Path) -> ServerProcess:
    """Start `argv`, wait for its `listening on HOST:PORT` line; stopped by PID on failure."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env,
                                 cwd=REPO, text=True)
    try:
        return ServerProcess(popen, _read_ready_line(popen, log_path), log_path, argv)
    except BaseException:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=10)
        raise


def _wait_ping(client_cls: type, address: Address) -> None:
    def ping() -> None:
        conn = connect(client_cls, address, 2.0)
        try:
            conn.client.ping()
        finally:
            conn.close()

    wait_until_ready(ping, timeout_s=READY_TIMEOUT_S)


# ---------------------------------------------------------------------- the relay


def relay_main(argv: list[str]) -> None:
    """LISTEN UPSTREAM RTT_S JITTER_S LOSS WINDOW_BYTES SEED: run the relay until SIGTERM."""
    listen_host, listen_port = argv[0].rsplit(":", 1)
    listen, upstream = Address(listen_host, int(listen_port)), Address.parse(argv[1])
    rtt_s, jitter_s, loss = float(argv[2]), float(argv[3]), float(argv[4])
    window, rng = int(argv[5]), random.Random(int(argv[6]))
    asyncio.run(_relay(listen, upstream, rtt_s, jitter_s, loss, window, rng))


async def _relay(listen: Address, upstream: Address, rtt_s: float, jitter_s: float,
                 loss: float, window: int, rng: random.Random) -> None:
    async def serve(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        accepted = time.monotonic()
        try:
            up_r, up_w = await asyncio.open_connection(upstream.host, upstream.port)
        except OSError:
            down_w.close()
            return
        # The handshake the relay answered at once: the first bytes wait one RTT more.
        inbound = _Pipe(down_r, up_w, rtt_s, jitter_s, loss, window, rng, accepted + 1.5 * rtt_s)
        outbound = _Pipe(up_r, down_w, rtt_s, jitter_s, loss, window, rng, 0.0)
        await asyncio.gather(inbound.run(), outbound.run(), return_exceptions=True)
        for writer in (up_w, down_w):
            writer.close()

    server = await asyncio.start_server(serve, listen.host, listen.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


class _Pipe:
    """One direction of a relayed connection: every chunk leaves RTT/2 ± jitter after it
    arrived (not before `not_before`), in order; a lost chunk waits a retransmission timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 rtt_s: float, jitter_s: float, loss: float, window: int,
                 rng: random.Random, not_before: float) -> None:
        self.reader, self.writer = reader, writer
        self.half_rtt_s, self.jitter_s, self.loss = rtt_s / 2, jitter_s, loss
        self.window, self.rng = window, rng
        self.last_due = not_before
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.more = asyncio.Event()  # something queued (or end of stream)
        self.room = asyncio.Event()  # the queue is below the window
        self.room.set()
        self.done = False

    async def run(self) -> None:
        await asyncio.gather(self._read(), self._write())

    def _due(self, now: float) -> float:
        due = now + self.half_rtt_s
        if self.jitter_s:
            due += self.rng.uniform(-self.jitter_s, self.jitter_s)
        if self.loss and self.rng.random() < self.loss:
            due += RTO_S + 2 * self.half_rtt_s
        self.last_due = max(self.last_due, due)
        return self.last_due

    async def _read(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                self.queue.append((self._due(time.monotonic()), data))
                self.queued += len(data)
                if self.queued >= self.window:
                    self.room.clear()
                self.more.set()
        finally:
            self.done = True
            self.more.set()

    async def _write(self) -> None:
        while True:
            if not self.queue:
                if self.done:
                    break
                self.more.clear()
                await self.more.wait()
                continue
            due, data = self.queue[0]
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self.queue.popleft()
            self.queued -= len(data)
            if self.queued < self.window:
                self.room.set()
            self.writer.write(data)
            await self.writer.drain()
        with contextlib.suppress(OSError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
