#!/usr/bin/env python3
"""Container health check: ping() the fedcluster server running in this container.

Zero configuration: it finds the node or coordinator among the container's processes
(/proc/*/cmdline), takes its PORT argument and its TLS files from that command line, and
calls `ping` on 127.0.0.1:PORT (ping is open: no token needed). Exit 0 when it answers,
1 when it does not; a container that runs no server (the one-shot client) is healthy.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

SERVERS = {"fedcluster-node": "node", "compute_node": "node",
           "fedcluster-coordinator": "coordinator", "coordinator": "coordinator"}
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
TIMEOUT_S = 3.0


def find_server() -> tuple[str, list[str]] | None:
    """(kind, arguments after the program) of the first server process, or None."""
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:3]):
            kind = SERVERS.get(Path(arg).name)
            # the program itself, a console script run by python, or `python -m PACKAGE`
            if kind and (i == 0 or argv[i - 1] == "-m" or (i == 1 and "python" in argv[0])):
                return kind, [a for a in argv[i + 1:] if a]
    return None


def port_and_tls(args: list[str]) -> tuple[int, dict[str, str]]:
    """The first positional argument (PORT) and the TLS files given on the command line."""
    tls: dict[str, str] = {}
    port = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in TLS_FLAGS:
                tls[name] = value if eq else args[i + 1]
            # every fedcluster server option but the flags below takes a value
            if not eq and name not in ("--no-batching", "--help"):
                i += 1
        elif port is None:
            port = int(arg)
        i += 1
    if port is None:
        raise ValueError("no PORT argument on the server's command line")
    return port, tls


def tls_context(files: dict[str, str]) -> ssl.SSLContext | None:
    """The chain is checked against the CA; the name is not (127.0.0.1 need not be a SAN)."""
    if not files:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if "--tls-ca" in files:
        context.load_verify_locations(files["--tls-ca"])
    else:
        context.verify_mode = ssl.CERT_NONE
    if "--tls-cert" in files and "--tls-key" in files:
        context.load_cert_chain(files["--tls-cert"], files["--tls-key"])
    return context


def main() -> int:
    found = find_server()
    if found is None:
        print("healthy: no fedcluster server in this container")
        return 0
    kind, args = found
    port, files = port_and_tls(args)
    from idl.gen import ComputeNode, Coordinator
    from idl.rpc import Address, connect

    client_cls = ComputeNode.Client if kind == "node" else Coordinator.Client
    try:
        conn = connect(client_cls, Address("127.0.0.1", port), TIMEOUT_S, tls_context(files))
        try:
            answered = conn.client.ping()
        finally:
            conn.close()
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {kind} on port {port}: {exc}")
        return 1
    print(f"healthy: {kind} on port {port}")
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
