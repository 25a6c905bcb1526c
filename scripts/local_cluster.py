"""Start a real cluster on loopback, and stop every process it started by PID.

Used by scripts/demo.sh, the benchmarks and the tests. As a command it starts a
coordinator and N compute nodes, runs the client with the arguments after `--`,
and stops everything afterwards, also on failure or Ctrl-C:

    python scripts/local_cluster.py --nodes 4 --policy load-aware -- DATA_DIR 3 75 24 1e-4

With `tls=TlsFiles(cert, key, ca)` (--tls-cert/--tls-key/--tls-ca on the command line)
every process gets the same three files: TLS on every hop, mutual when a CA is given.

Every server binds port 0 and prints `listening on HOST:PORT` on stdout once it
accepts connections; the harness reads that line, then polls ping() until it
answers. Nothing sleeps to "let it start".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import click

from coordinator.policies import ALIASES, POLICIES
from idl.gen import ComputeNode, Coordinator
from idl.rpc import Address, connect, wait_until_ready
from idl.tls import TlsConfigError, TlsFiles, client_context
from runtime.cli import FiniteRange, ListType, RenamedOption, run_cli

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

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting for it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.popen.stdout:
            self.popen.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(
    module: str, args: list[str], log_path: Path, client_cls: type | None,
    tls: TlsFiles | None = None,
) -> ServerProcess:
    """Run `python -m module args...`, wait for its ready line and a successful ping.

    With `tls`, the server gets the files as options and the ping goes over TLS with them.
    `client_cls` None: the server speaks HTTP (the gateway), and GET /v1/health is its ping.
    """
    tls = tls or TlsFiles()
    argv = [sys.executable, "-m", module, *args, *tls.args()]
    context = client_context(tls)
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
            if client_cls is None:
                with urllib.request.urlopen(f"http://{address}/v1/health", timeout=2.0):
                    return
            conn = connect(client_cls, address, 2.0, context)
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
    fd = popen.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = ""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536).decode(errors="replace")
        except BlockingIOError:
            chunk = ""
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


def start_node(
    workdir: Path, load_probability: float = 0.0, *extra: str, tls: TlsFiles | None = None
) -> ServerProcess:
    """A real compute node on a free loopback port (load delay defaults to 3 s as the seed's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("node-*.log")))
    return start_server(
        "compute_node",
        ["0", str(load_probability), "--host", "127.0.0.1", *extra],
        workdir / f"node-{index}.log",
        ComputeNode.Client,
        tls,
    )


def start_coordinator(
    workdir: Path, policy: str, nodes: list[Address], *extra: str, tls: TlsFiles | None = None
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
        tls,
    )


def start_gateway(
    workdir: Path, coordinators: list[Address], *extra: str, db: Path | None = None,
    data_root: Path | None = None, tls: TlsFiles | None = None, port: int = 0,
) -> ServerProcess:
    """A real gateway on a free loopback port: plain HTTP for people; the cluster's TLS files
    (if any) for its own calls to the coordinators. A start with the same `db` (and `port`,
    for pages left open) continues where the last one stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = data_root or workdir / "datasets"
    data_root.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("gateway-*.log")))
    return start_server(
        "gateway",
        [str(port), "--host", "127.0.0.1", "--coordinators", ",".join(map(str, coordinators)),
         "--db", str(db or workdir / "gateway.db"), "--data-root", str(data_root), *extra],
        workdir / f"gateway-{index}.log",
        None,
        tls,
    )


@dataclass(frozen=True)
class Pki:
    """Throwaway certificates: what the servers, a client and a stranger are given."""

    server: TlsFiles  # SAN IP:127.0.0.1; serves and, with the CA, calls out (node, coordinator)
    client: TlsFiles  # a client certificate from the same CA
    stranger: TlsFiles  # a client certificate from another CA (trusting ours)
    other_ca: Path


def throwaway_pki(directory: Path, openssl: str = "openssl") -> Pki:
    """Make a CA and certificates with the openssl command (for tests and benchmarks)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    def new_ca(name: str) -> None:
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=fedcluster {name}")

    def issue(name: str, ca: str, extensions: str) -> None:
        (directory / f"{name}.ext").write_text(extensions)
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=fedcluster {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")

    new_ca("ca")
    new_ca("other-ca")
    # Servers call out with the same certificate, so it is good for both ends.
    issue("server", "ca", "subjectAltName=IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth,clientAuth\n")
    issue("client", "ca", "extendedKeyUsage=clientAuth\n")
    issue("stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    ca = directory / "ca.pem"

    def files(name: str) -> TlsFiles:
        return TlsFiles(directory / f"{name}.pem", directory / f"{name}.key", ca)

    return Pki(files("server"), files("client"), files("stranger"), directory / "other-ca.pem")


class LocalCluster:
    """A coordinator and compute nodes on loopback, stopped together on exit."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.tls = tls or TlsFiles()  # given to every process it starts
        self.nodes: list[ServerProcess] = []
        self.coordinators: list[ServerProcess] = []

    def add_node(self, load_probability: float = 0.0, *extra: str) -> ServerProcess:
        node = start_node(self.workdir, load_probability, *extra, tls=self.tls)
        self.nodes.append(node)
        return node

    def add_coordinator(
        self, policy: str = "round-robin", *extra: str, nodes: list[Address] | None = None
    ) -> ServerProcess:
        addresses = [n.address for n in self.nodes] if nodes is None else nodes
        coordinator = start_coordinator(self.workdir, policy, addresses, *extra, tls=self.tls)
        self.coordinators.append(coordinator)
        return coordinator

    @property
    def coordinator(self) -> ServerProcess:
        return self.coordinators[0]

    def stop(self) -> None:
        """Signal every process first, then wait for each: teardown costs one exit, not N."""
        everyone = [*self.coordinators, *self.nodes]
        for proc in everyone:
            proc.terminate()
        for proc in everyone:
            proc.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


POLICY_CHOICE = click.Choice([*POLICIES, *ALIASES], case_sensitive=False)


# allow_interspersed_args=False: after the first client argument, the rest go to the client.
@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "allow_interspersed_args": False},
               epilog="Arguments after -- go to the client after the coordinator's address: "
                      "DATA_DIR ROUNDS EPOCHS H ETA [client options].")
@click.option("--nodes", "n_nodes", type=click.IntRange(min=1), default=4, show_default=True,
              help="Compute nodes.")
@click.option("--policy", type=POLICY_CHOICE, default="load-aware", show_default=True,
              help="Scheduling policy.")
@click.option("--loads", type=ListType(FiniteRange(0.0, 1.0)), default=None,
              help="Load probability per node, comma-separated [0 for every node].")
@click.option("--load-delay-s", "--load-delay", "load_delay_s", cls=RenamedOption,
              type=FiniteRange(min=0.0, max=3600), default=3.0, show_default=True,
              help="Seconds a loaded node sleeps before training.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Logs go here [a new temporary directory].")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TLS cert file given to every process (and the client).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TLS key file given to every process (and the client).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TLS CA file given to every process (and the client).")
@click.argument("client_args", nargs=-1, type=click.UNPROCESSED)
def cli(n_nodes: int, policy: str, loads: list[float] | None, load_delay_s: float,
        workdir: Path | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
        client_args: tuple[str, ...]) -> int:
    """Start a local cluster, run the client against it, stop everything."""
    import tempfile

    loads = loads or [0.0] * n_nodes
    if len(loads) != n_nodes:
        raise click.BadParameter(f"names {len(loads)} nodes, --nodes says {n_nodes}",
                                 param_hint="--loads")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fedcluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tls = TlsFiles(tls_cert, tls_key, tls_ca)
    with LocalCluster(workdir, tls) as cluster:
        try:
            for load in loads:
                cluster.add_node(load, "--load-delay-s", str(load_delay_s))
            coordinator = cluster.add_coordinator(policy)
        except (RuntimeError, TimeoutError, TlsConfigError) as exc:
            raise click.ClickException(f"could not start the cluster: {_one_line(exc)}") from None
        print(f"cluster: coordinator {coordinator.address}, {len(cluster.nodes)} nodes "
              f"({', '.join(str(n.address) for n in cluster.nodes)}), logs in {workdir}",
              flush=True)
        pids = " ".join(str(p.pid) for p in [*cluster.coordinators, *cluster.nodes])
        print(f"cluster: pids {pids}", flush=True)
        if not client_args:
            print("no client arguments given: cluster up, Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                cluster.coordinator.popen.wait()
            return 0
        argv_client = [sys.executable, "-m", "client", coordinator.address.host,
                       str(coordinator.address.port), *client_args, *tls.args()]
        try:
            return subprocess.call(argv_client)
        except KeyboardInterrupt:
            return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "local_cluster.py", argv)


if __name__ == "__main__":
    main()
