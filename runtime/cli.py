"""Command-line pieces every command shares: address, list and finite-float types, the entry.

Click validates; the cores trust what they are given. A user's mistake ends as one
`error: ...` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from idl.admission import ServerLimits
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from idl.rpc import Address, ThriftServer
from idl.tls import TlsConfigError, TlsContexts, TlsFiles, load_contexts
from runtime.events import log_event
from runtime.serving_limits import DEFAULT_MAX_PREDICT_WORK


class AddressType(click.ParamType):
    """host:port (or host,port), checked at the command line."""

    name = "HOST:PORT"

    def convert(self, value, param, ctx) -> Address:
        if isinstance(value, Address):
            return value
        try:
            return Address.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class AddressListType(click.ParamType):
    """host:port,host:port,... as a list of Address."""

    name = "HOST:PORT,..."

    def convert(self, value, param, ctx) -> list[Address]:
        if isinstance(value, list):
            return value
        try:
            return [Address.parse(part) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class FiniteRange(click.FloatRange):
    """A float in a range, and finite: click's FloatRange lets nan and inf through.

    Every float option of every command uses this type (tests/test_cli_contract.py checks).
    """

    name = "float"

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, got {value}", param, ctx)
        return number

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()


MIB = 1024 * 1024
MAX_CACHE_MB = 1024 * 1024  # 1 TiB: beyond any machine, and int() of it cannot overflow


def shard_cache_option(what: str) -> Callable[[Any], Any]:
    """--max-shard-cache-mb, the same bound on both servers; the command receives bytes."""
    return click.option(
        "--max-shard-cache-mb", "max_shard_cache_bytes",
        type=FiniteRange(min=0.0, min_open=True, max=MAX_CACHE_MB), default=1024.0,
        show_default=True, callback=lambda _ctx, _param, mb: int(mb * MIB),
        help=f"Bound on {what}, in MiB.",
    )


def model_cache_option(what: str) -> Callable[[Any], Any]:
    """--max-model-cache-mb, the bound on held model files; the command receives bytes."""
    return click.option(
        "--max-model-cache-mb", "max_model_cache_bytes",
        type=FiniteRange(min=0.0, min_open=True, max=MAX_CACHE_MB), default=512.0,
        show_default=True, callback=lambda _ctx, _param, mb: int(mb * MIB),
        help=f"Bound on {what}, in MiB (least recently used out first).",
    )


class ListType(click.ParamType):
    """Comma-separated values, each checked by `item` (e.g. --nodes 1,2,4 as [1, 2, 4])."""

    def __init__(self, item: click.ParamType, name: str | None = None) -> None:
        self.item = item
        self.name = name or f"{item.name.split()[0].upper()},..."

    def convert(self, value, param, ctx) -> list[Any]:
        if isinstance(value, list):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(parts):
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        items = []
        for part in parts:
            try:
                items.append(self.item.convert(part, param, ctx))
            except click.BadParameter as exc:
                self.fail(f"{exc.message.rstrip('.')} (in {value!r})", param, ctx)
        return items


class RenamedOption(click.Option):
    """An option whose first name is its name; the others are old spellings, still
    accepted but left out of --help (e.g. --load-delay for --load-delay-s)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every_name, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every_name


def old_unit_alias(old: str, param_name: str, factor: float, kind: click.ParamType):
    """A hidden option `old` in another unit: its value times `factor` becomes `param_name`'s.

    For a renamed option whose unit changed too (--delay-ms for --delay-s, factor 1e-3).
    """
    dest = f"old_{param_name}"

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_alias(*args: Any, **kwargs: Any) -> Any:
            old_value = kwargs.pop(dest)
            if old_value is not None:
                source = click.get_current_context().get_parameter_source(param_name)
                if source is click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(
                        f"{old} is the old name of --{param_name.replace('_', '-')}: give one"
                    )
                kwargs[param_name] = old_value * factor
            return command(*args, **kwargs)

        return click.option(old, dest, type=kind, default=None, hidden=True)(with_alias)

    return decorate


def require_module(name: str, extra: str = "bench") -> Any:
    """Import an optional dependency, or end with one line that says how to install it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise click.ClickException(
            f"this script needs {name}: .venv/bin/pip install -e '.[{extra}]'"
        ) from None


def run_cli(command: click.Command, prog_name: str, argv: list[str] | None = None) -> None:
    """Run a click command; user mistakes become one `error: ...` line and a non-zero exit.

    A command that returns an int exits with it (a script passing on its child's code).
    """
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a group run bare: its help, as click does
        click.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


def listen_or_fail(processor: Any, host: str, port: int, name: str, tls: TlsContexts,
                   limits: ServerLimits) -> ThriftServer:
    """A ThriftServer bound to host:port; a port that cannot be bound is a user's mistake."""
    try:
        return ThriftServer(processor, host, port, name=name, tls=tls.server, **limits.kwargs())
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def serve_until_stopped(server: ThriftServer, helpers: list[Any]) -> None:
    """Serve until SIGTERM or SIGINT; `helpers` (start()/stop() objects) run alongside.

    Prints `listening on HOST:PORT` once the server accepts connections: the line the
    harness and scripts wait for.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    print(f"listening on {server.address}", flush=True)
    for helper in helpers:
        helper.start()
    server.serve_forever()
    for helper in helpers:
        helper.stop()
    log_event("stopped", address=str(server.address))


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


def server_limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What a server's peers may hold (see ThriftServer), the same on every server.

    The command gets one `limits: ServerLimits` argument instead of the six options; pass
    it on as `ThriftServer(..., **limits.kwargs())`.
    """
    mb = 1024 * 1024
    defaults = ServerLimits()

    @functools.wraps(command)
    def with_limits(*args: Any, max_connections: int, max_connections_per_peer: int,
                    max_frame_mb: float, in_flight_mb: float, idle_timeout_s: float,
                    frame_timeout_s: float, **kwargs: Any) -> Any:
        if in_flight_mb < max_frame_mb:
            raise click.UsageError(
                f"--in-flight-mb ({in_flight_mb:g}) is below --max-frame-mb "
                f"({max_frame_mb:g}): a frame of the largest size could never be received"
            )
        limits = ServerLimits(
            max_connections, max_connections_per_peer, int(max_frame_mb * mb),
            int(in_flight_mb * mb), idle_timeout_s, frame_timeout_s,
        )
        return command(*args, limits=limits, **kwargs)

    positive: dict[str, Any] = {"min": 0, "min_open": True}
    for name, kind, default, help_text in reversed((
        ("--max-connections", click.IntRange(min=1), defaults.max_connections,
         "Connections served at once; when full, the longest-idle one gives way to a new "
         "one (refused if none is idle)."),
        ("--max-connections-per-peer", click.IntRange(min=1),
         defaults.max_connections_per_peer,
         "Connections from one address at once (its own longest-idle one gives way)."),
        ("--max-frame-mb", FiniteRange(max=2047, **positive),
         defaults.max_frame_bytes / mb, "Largest message accepted, in MiB."),
        ("--in-flight-mb", FiniteRange(**positive), defaults.in_flight_bytes / mb,
         "MiB that frames being received may hold in all; beyond it, a connection "
         "that needs more is closed."),
        ("--idle-timeout-s", FiniteRange(**positive), defaults.idle_timeout_s,
         "Seconds a connection may wait for its next message before it is closed."),
        ("--frame-timeout-s", FiniteRange(**positive), defaults.frame_timeout_s,
         "Seconds a message may take to arrive once its first byte did (and a TLS "
         "handshake to finish)."),
    )):
        with_limits = click.option(
            name, type=kind, default=default, show_default=True, help=help_text,
        )(with_limits)
    return with_limits


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
            ("--tls-ca", "CA that signs the peers' certificates: servers called are "
                         "verified by it, and callers must present one (mutual TLS)."
                         if serves else "CA the server's certificate must be signed by "
                         "[the system's trust store]."),
            ("--tls-key", "PEM private key of --tls-cert."),
            ("--tls-cert", "PEM certificate: served (TLS on) and presented when calling out."
                           if serves else "PEM client certificate presented to the server."),
        ):
            with_tls = click.option(name, type=pem, default=None, help=help_text)(with_tls)
        return with_tls

    return decorate


TOKEN_ENV = "FEDCLUSTER_TOKEN"


def token_options(purpose: str):
    """--token-file PATH and --token (or FEDCLUSTER_TOKEN), the same on every command.

    The command gets one `token: str` argument ("" = none). A file or the environment
    keeps the secret out of `ps` and shell history; a bare --token stays for quick local
    runs. The token is checked at start (readable file, utf-8, not empty) and never logged.
    `purpose` ends the help text: what the token does for this command.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_token(*args: Any, token_file: Path | None, token: str | None,
                       **kwargs: Any) -> Any:
            if token_file is not None and token and _from_environment("token"):
                token = None  # an exported FEDCLUSTER_TOKEN yields to an explicit file
            return command(*args, token=read_token(token_file, token), **kwargs)

        with_token = click.option(
            "--token", default=None, envvar=TOKEN_ENV, show_envvar=True,
            help="The token itself; visible in `ps` and shell history, so prefer "
                 f"--token-file or {TOKEN_ENV}.",
        )(with_token)
        return click.option(
            "--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None, help=f"File holding the cluster's shared secret: {purpose}",
        )(with_token)

    return decorate


def _from_environment(param: str) -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and (
        ctx.get_parameter_source(param) is click.core.ParameterSource.ENVIRONMENT
    )


def read_token(token_file: Path | None, token: str | None) -> str:
    """The token from the file (one trailing newline dropped) or as given; "" for none."""
    if token_file is not None:
        if token:
            raise click.UsageError(
                "give the token once: --token-file or --token, not both"
            )
        try:
            token = token_file.read_bytes().decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise click.BadParameter("the token file is not utf-8 text",
                                     param_hint="--token-file") from None
        except OSError as exc:
            raise click.BadParameter(f"cannot read {token_file}: {exc.strerror or exc}",
                                     param_hint="--token-file") from None
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    token = token or ""
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:  # bytes the environment could not decode
        raise click.BadParameter(f"the token is not valid utf-8 (check {TOKEN_ENV})",
                                 param_hint="--token") from None
    return token


def server_options(*, token: str, cache: str, work: str, models: str) -> Callable[[Any], Any]:
    """The options both servers take, declared once: bind address, token, work bounds, shard
    and model caches, metrics, connection limits, TLS and log level; the phrases say what
    differs."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        token_options(token),
        click.option(
            "--max-task-work", type=click.IntRange(min=1), default=DEFAULT_MAX_TASK_WORK,
            show_default=True, help=f"Refuse {work} epochs x rows x parameters exceed this.",
        ),
        shard_cache_option(cache),
        model_cache_option(models),
        click.option(
            "--max-predict-work", type=click.IntRange(min=1), default=DEFAULT_MAX_PREDICT_WORK,
            show_default=True,
            help="Refuse predict requests (and evaluated shards) whose rows x parameters "
                 "(all members) exceed this.",
        ),
        metrics_port_option,
        server_limit_options,
        tls_options(serves=True),
        log_level_option(),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply
