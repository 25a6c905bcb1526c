"""Command-line pieces every process shares: address types, a finiteness check, the entry.

Click validates; the cores trust what they are given. A user's mistake ends as one
`error: ...` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from idl.rpc import Address
from idl.tls import TlsConfigError, TlsFiles, load_contexts


class AddressType(click.ParamType):
    """host:port (or host,port), checked at the command line."""

    name = "HOST:PORT"

    def convert(self, value, param, ctx) -> Address:  # type: ignore[override]
        if isinstance(value, Address):
            return value
        try:
            return Address.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class AddressListType(click.ParamType):
    """host:port,host:port,... as a list of Address."""

    name = "HOST:PORT,..."

    def convert(self, value, param, ctx) -> list[Address]:  # type: ignore[override]
        if isinstance(value, list):
            return value
        try:
            return [Address.parse(part) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Callback for float options: FloatRange lets nan and inf through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", ctx, param)
    return value


def run_cli(command: click.Command, prog_name: str, argv: list[str] | None = None) -> None:
    """Run a click command; user mistakes become one `error: ...` line and a non-zero exit."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(0)


def serve_metrics_or_fail(metrics: Any, host: str, port: int) -> None:
    """Start `metrics.serve(host, port)`; a port that cannot be bound is a user's mistake."""
    try:
        metrics.serve(host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None


def log_level_option(default: str = "INFO"):
    """--log-level, the same on every command."""
    levels = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
    return click.option(
        "--log-level", type=levels, default=default, show_default=True,
        help="Events at this level and above go to stderr.",
    )


metrics_port_option = click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=None,
    help="Serve Prometheus metrics on this port (0 = any free port) [off].",
)


def tls_options(*, serves: bool):
    """--tls-cert, --tls-key, --tls-ca, the same on every command; see idl/tls.py.

    The command gets one `tls: TlsContexts` argument instead of the three paths, built
    before it runs, so a bad file is one `error:` line at start, not a failure at the
    first call. `serves`: the command is a server (it needs cert + key to use TLS).
    """
    pem = click.Path(exists=True, dir_okay=False, path_type=Path)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_tls(*args: Any, tls_cert: Path | None, tls_key: Path | None,
                     tls_ca: Path | None, **kwargs: Any) -> Any:
            try:
                tls = load_contexts(TlsFiles(tls_cert, tls_key, tls_ca), serves=serves)
            except TlsConfigError as exc:
                raise click.ClickException(str(exc)) from None
            return command(*args, tls=tls, **kwargs)

        for name, help_text in (
            ("--tls-ca", "CA that signs the peers' certificates: servers verified by it; "
                         "on a server, clients must present one (mutual TLS)."),
            ("--tls-key", "PEM private key of --tls-cert."),
            ("--tls-cert", "PEM certificate: served (TLS on) and presented when calling out."
                           if serves else "PEM client certificate presented to the server."),
        ):
            with_tls = click.option(name, type=pem, default=None, help=help_text)(with_tls)
        return with_tls

    return decorate
