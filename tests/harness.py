"""Start real cluster processes on loopback for tests, and stop them by PID.

Every server binds port 0 and prints `listening on HOST:PORT` on stdout once it
accepts connections; the harness reads that line, then polls ping() until it
answers. Nothing sleeps to "let it start".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from idl.gen import ComputeNode, Coordinator
from idl.rpc import Address, connect, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "letter-recognition.data"
READY_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    """A server process started by a test; `stop()` ends it by PID."""

    popen: subprocess.Popen
    address: Address
    log_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as a crashed machine would."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.popen.stdout:
            self.popen.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(module: str, args: list[str], log_path: Path, client_cls: type) -> ServerProcess:
    """Run `python -m module args...`, wait for its ready line and a successful ping."""
    argv = [sys.executable, "-m", module, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log_file, env=env, cwd=log_path.parent, text=True
    )
    log_file.close()
    try:
        address = _read_ready_line(popen, log_path)
        proc = ServerProcess(popen, address, log_path, argv)

        def ping() -> None:
            conn = connect(client_cls, address, timeout_s=2.0)
            try:
                conn.client.ping()
            finally:
                conn.close()

        wait_until_ready(ping, timeout_s=READY_TIMEOUT_S)
        return proc
    except BaseException:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=10)
        raise


def _read_ready_line(popen: subprocess.Popen, log_path: Path) -> Address:
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert popen.stdout is not None
    os.set_blocking(popen.stdout.fileno(), False)
    buffer = ""
    while time.monotonic() < deadline:
        chunk = popen.stdout.read()
        if chunk:
            buffer += chunk
            for line in buffer.splitlines():
                if line.startswith("listening on "):
                    return Address.parse(line.removeprefix("listening on ").strip())
        if popen.poll() is not None:
            raise RuntimeError(
                f"{' '.join(popen.args)} exited with {popen.returncode} before it was ready:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.01)
    raise TimeoutError(f"no ready line from {' '.join(popen.args)} in {READY_TIMEOUT_S}s")


def start_node(workdir: Path, load_probability: float = 0.0, *extra: str) -> ServerProcess:
    """A real compute node on a free loopback port (load delay defaults to 3 s as the seed's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("node-*.log")))
    return start_server(
        "compute_node",
        ["0", str(load_probability), "--host", "127.0.0.1", *extra],
        workdir / f"node-{index}.log",
        ComputeNode.Client,
    )


def start_coordinator(
    workdir: Path, policy: str, nodes: list[Address], *extra: str
) -> ServerProcess:
    """A real coordinator on a free loopback port, knowing `nodes` through a nodes file."""
    workdir.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("coordinator-*.log")))
    nodes_file = workdir / f"compute_nodes-{index}.txt"
    nodes_file.write_text("".join(f"{a.host},{a.port}\n" for a in nodes))
    return start_server(
        "coordinator",
        ["0", policy, "--host", "127.0.0.1", "--nodes", str(nodes_file), *extra],
        workdir / f"coordinator-{index}.log",
        Coordinator.Client,
    )
