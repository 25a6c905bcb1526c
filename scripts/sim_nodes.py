"""Many simulated ComputeNode endpoints in one light process, for scale benchmarks.

Why: a coordinator's overhead at 1,000 nodes cannot be measured with 1,000 real node
processes on a 2-core machine. This process serves COUNT real Thrift endpoints (one
listening socket each, ports chosen by the OS) from one asyncio event loop, speaking the
same framed binary protocol as a real node. train() does no training: after --delay-s it
returns a valid TaskResult whose delta is zeros of the weights' shapes. Shards are honoured
like a real node: train() on a digest the endpoint has not been sent raises ShardMissing,
put_shard() checks the sha256 and remembers the digest (bytes are not kept).

    python scripts/sim_nodes.py --count 1000 --delay-s 0.002 --nodes-out nodes.txt

Writes every endpoint as `host,port` (a coordinator nodes file) to --nodes-out, then prints
`listening on HOST:PORT` (the first endpoint) once all accept connections. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import struct
import sys
from pathlib import Path

import click
from thrift.transport import TTransport

from idl.framing import MAX_MESSAGE_BYTES
from idl.gen import ComputeNode
from idl.gen.ttypes import (
    InvalidRequest,
    NodeLoad,
    ShardMissing,
    ShardTask,
    TaskResult,
    TaskTimings,
    Tensor,
)
from idl.protocol import protocol_factory
from runtime.cli import FiniteRange, log_level_option, old_unit_alias, run_cli
from runtime.events import configure_logging, log_event

_FRAME = struct.Struct("!i")


class SimNode:
    """One endpoint's ComputeNode.Iface: remembers shard digests, trains nothing."""

    def __init__(self, address: str, delay_s: float, require_shards: bool) -> None:
        self.address = address
        self.delay_s = delay_s
        self.require_shards = require_shards
        self.digests: set[str] = set()
        self.tasks_done = 0
        self.shard_uploads = 0
        self.reply_delay_s = 0.0  # set by train(): how long the protocol holds the reply

    def ping(self) -> bool:
        return True

    def load(self, token: str = "") -> NodeLoad:
        return NodeLoad(
            tasks_in_flight=0, recent_service_s=self.delay_s, load_probability=0.0,
            tasks_done=self.tasks_done, tasks_declined=0,
            shards_cached=len(self.digests),
        )

    def missing_shards(self, digests: list[str], token: str = "") -> list[str]:
        return [d for d in digests or [] if d not in self.digests]

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        if hashlib.sha256(data or b"").hexdigest() != digest:
            raise InvalidRequest(message=f"put_shard: bytes do not hash to {digest}")
        self.digests.add(digest)
        self.shard_uploads += 1

    def train(self, task: ShardTask) -> TaskResult:
        digest = task.shard.digest if task.shard else ""
        if self.require_shards and digest not in self.digests:
            raise ShardMissing(message=f"shard {digest} is not on this node", digest=digest)
        self.tasks_done += 1
        self.reply_delay_s = self.delay_s
        return TaskResult(
            delta=[_zeros_like(t) for t in task.weights or []],
            n_samples=task.shard.n_rows if task.shard else 0,
            train_loss=0.0,
            train_error=0.0,
            timings=TaskTimings(load_delay_s=0.0, compute_s=0.0, wait_s=0.0,
                                total_s=self.delay_s),
            node=self.address,
        )


_ZEROS: dict[int, bytes] = {}


def _zeros_like(tensor: Tensor) -> Tensor:
    n = len(tensor.data or b"")
    if n not in _ZEROS:
        _ZEROS[n] = bytes(n)
    return Tensor(shape=list(tensor.shape or []), data=_ZEROS[n])


class _Connection(asyncio.Protocol):
    """Frames in, the generated Processor on a memory buffer, frames out (maybe delayed)."""

    def __init__(self, node: SimNode, processor: ComputeNode.Processor) -> None:
        self._node = node
        self._processor = processor
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._protocols = protocol_factory()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (size,) = _FRAME.unpack_from(self._buffer)
            if size < 0 or size > MAX_MESSAGE_BYTES:
                self._transport.close()
                return
            if len(self._buffer) < 4 + size:
                return
            frame = bytes(self._buffer[4 : 4 + size])
            del self._buffer[: 4 + size]
            self._answer(frame)

    def _answer(self, frame: bytes) -> None:
        out = TTransport.TMemoryBuffer()
        self._node.reply_delay_s = 0.0
        self._processor.process(
            self._protocols.getProtocol(TTransport.TMemoryBuffer(frame)),
            self._protocols.getProtocol(out),
        )
        reply = out.getvalue()
        message = _FRAME.pack(len(reply)) + reply
        if self._node.reply_delay_s > 0:
            asyncio.get_running_loop().call_later(self._node.reply_delay_s, self._send, message)
        else:
            self._send(message)

    def _send(self, message: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(count: int, host: str, delay_s: float, require_shards: bool,
                nodes_out: Path | None) -> None:
    """Open `count` endpoints, announce them, serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    servers = []
    endpoints = []
    for _ in range(count):
        holder: dict[str, SimNode] = {}

        def factory(holder: dict = holder) -> _Connection:
            node = holder["node"]
            return _Connection(node, holder["processor"])

        server = await loop.create_server(factory, host, 0, backlog=128, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        node = SimNode(f"{host}:{port}", delay_s, require_shards)
        holder["node"] = node
        holder["processor"] = ComputeNode.Processor(node)
        servers.append(server)
        endpoints.append(node)
    if nodes_out is not None:
        nodes_out.write_text("".join(f"{host},{n.address.rsplit(':', 1)[1]}\n"
                                     for n in endpoints))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log_event("sim_nodes_listening", endpoints=count, delay_s=delay_s,
              first=endpoints[0].address, last=endpoints[-1].address)
    print(f"listening on {endpoints[0].address}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    log_event("stopped", endpoints=count, tasks=sum(n.tasks_done for n in endpoints),
              shard_uploads=sum(n.shard_uploads for n in endpoints))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", type=click.IntRange(1, 5000), default=100, show_default=True,
              help="Endpoints to serve, each on its own OS-chosen port.")
@click.option("--delay-s", type=FiniteRange(min=0, max=3600), default=0.0, show_default=True,
              help="Seconds train() takes to answer.")
@old_unit_alias("--delay-ms", "delay_s", 1e-3, FiniteRange(min=0, max=3_600_000))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--nodes-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the endpoints here as a coordinator nodes file (host,port lines).")
@click.option("--no-shard-check", is_flag=True,
              help="Train any digest without a put_shard first.")
@log_level_option()
def cli(count: int, delay_s: float, host: str, nodes_out: Path | None, no_shard_check: bool,
        log_level: str) -> None:
    """Serve COUNT simulated compute nodes from one process."""
    configure_logging(log_level, component="sim_nodes")
    try:
        asyncio.run(serve(count, host, delay_s, not no_shard_check, nodes_out))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror or exc}") from None


def start_sim_nodes(workdir: Path, count: int, delay_s: float = 0.0, *extra: str):
    """Start this script as a process; returns (ServerProcess, endpoint addresses)."""
    import os
    import subprocess

    from local_cluster import ServerProcess, _read_ready_line

    from idl.rpc import Address, connect, wait_until_ready

    workdir.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("sim-nodes-*.log")))
    nodes_out = workdir / f"sim-nodes-{index}.txt"
    log_path = workdir / f"sim-nodes-{index}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--count", str(count),
            "--delay-s", repr(delay_s), "--nodes-out", str(nodes_out), *extra]
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=workdir)
    try:
        first = _read_ready_line(popen, log_path)
        proc = ServerProcess(popen, first, log_path, argv)

        def ping() -> None:
            conn = connect(ComputeNode.Client, first, timeout_s=2.0)
            try:
                conn.client.ping()
            finally:
                conn.close()

        wait_until_ready(ping, timeout_s=30.0)
        addresses = [Address.parse(line) for line in nodes_out.read_text().split()]
        return proc, addresses
    except BaseException:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=10)
        raise


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "sim_nodes.py", argv)


if __name__ == "__main__":
    main()
