"""`python -m client status HOST:PORT`: the coordinator's view of the cluster as a table.

Read-only: one status() call per refresh on its own connection, so it can watch a
cluster while a training client is running against the same coordinator.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
import time
from collections.abc import Callable

import click
from thrift.Thrift import TException

from idl.gen import Coordinator
from idl.gen.ttypes import ClusterStatus, Unauthorized
from idl.rpc import Address, connect
from idl.tls import TlsContexts
from runtime.cli import FiniteRange, RenamedOption, tls_options, token_options

COLUMNS = ("node", "alive", "load p", "in flight", "done", "failures", "last seen", "service")


def fetch_status(
    address: Address, timeout_s: float = 5.0, tls: ssl.SSLContext | None = None,
    token: str = "",
) -> ClusterStatus:
    """One status() call on a fresh connection (transport errors and Unauthorized propagate)."""
    conn = connect(Coordinator.Client, address, timeout_s, tls)
    try:
        return conn.client.status(token)
    finally:
        conn.close()


def _seen(seconds_ago: float) -> str:
    return "never" if seconds_ago is None or seconds_ago < 0 else f"{seconds_ago:.1f}s ago"


def format_status(status: ClusterStatus, address: Address | str = "") -> str:
    """Nodes as a fixed-width table (known order), then the counters sorted by name."""
    rows = [
        (n.address, "yes" if n.alive else "NO", f"{n.load_probability:.2f}",
         str(n.tasks_in_flight), str(n.tasks_done), str(n.failures), _seen(n.last_seen_s_ago),
         f"{n.recent_service_s:.3f}s" if n.recent_service_s else "-")
        for n in status.nodes or []
    ]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    alive = sum(1 for n in status.nodes or [] if n.alive)
    lines = [f"coordinator {address}  policy {status.policy}  "
             f"nodes {alive}/{len(status.nodes or [])} alive"]
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True))))
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    if not rows:
        lines.append("(no nodes known)")
    counters = status.counters or {}
    lines.append("counters: " + ("  ".join(f"{k}={v}" for k, v in sorted(counters.items()))
                                 or "none yet"))
    return "\n".join(lines)


def watch(
    show: Callable[[], None], interval_s: float, count: int | None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call `show` every `interval_s` seconds, `count` times (None: until Ctrl-C)."""
    shown = 0
    while count is None or shown < count:
        if shown:
            sleep(interval_s)
        show()
        shown += 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("coordinator", metavar="HOST:PORT")
@click.option("--watch", "interval_s", type=FiniteRange(min=0.1, max=3600), is_flag=False,
              flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Refresh every SECONDS (default 2) until Ctrl-C.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --watch: stop after this many refreshes.")
@click.option("--timeout-s", "--timeout", "timeout_s", cls=RenamedOption,
              type=FiniteRange(min=0.1, max=600), default=5.0,
              show_default=True, help="Seconds to wait for the coordinator's answer.")
@tls_options(serves=False)
@token_options("sent with the status call.")
def status_command(coordinator: str, interval_s: float | None, count: int | None,
                   timeout_s: float, tls: TlsContexts, token: str) -> None:
    """Show the coordinator's view of the cluster: nodes, their load and the counters."""
    logging.getLogger("thrift").setLevel(logging.CRITICAL)  # we report failures ourselves
    try:
        address = Address.parse(coordinator)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="HOST:PORT") from None
    if interval_s is None:
        click.echo(format_status(_fetch_or_fail(address, timeout_s, tls.client, token),
                                 address))
        return
    on_terminal = sys.stdout.isatty()

    def show() -> None:
        try:
            text = format_status(fetch_status(address, timeout_s, tls.client, token), address)
        except Unauthorized as exc:
            text = f"coordinator {address} refused: {exc.message}"
        except (TException, OSError, EOFError) as exc:
            text = f"coordinator {address} unreachable: {exc or type(exc).__name__}"
        if on_terminal:
            click.clear()
        click.echo(f"{time.strftime('%H:%M:%S')}  (every {interval_s:g}s, Ctrl-C stops)")
        click.echo(text + ("" if on_terminal else "\n"))

    with contextlib.suppress(KeyboardInterrupt):
        watch(show, interval_s, count)


def _fetch_or_fail(
    address: Address, timeout_s: float, tls: ssl.SSLContext | None, token: str = ""
) -> ClusterStatus:
    try:
        return fetch_status(address, timeout_s, tls, token)
    except Unauthorized as exc:
        raise click.ClickException(f"coordinator {address} refused: {exc.message}") from None
    except (TException, OSError, EOFError) as exc:
        raise click.ClickException(
            f"cannot reach the coordinator at {address}: {exc or type(exc).__name__}; "
            "check the address and that it is running"
            + ("" if tls else " (and --tls-ca if it serves TLS)")
        ) from None
