"""`python -m client predict` and `python -m client evaluate`: use a trained model file
through the cluster. Click checks the arguments; client.serving does the work."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from client.dataset import UnknownDataDir, resolve_data_dir
from client.reports import evaluation_text, plot_confusion, prediction_lines, write_table_csv
from client.rows import RowError, read_rows
from client.serving import ModelFile, ServingFailed, ServingLink, read_model_file
from idl.gen.ttypes import ShardRef
from idl.rpc import Address
from idl.tls import TlsContexts
from mlcore.data import DataError, Dataset, read_data_dir, read_data_file
from runtime.cli import (
    AddressListType,
    AddressType,
    FiniteRange,
    log_level_option,
    tls_options,
    token_options,
)
from runtime.events import configure_logging

SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
WHICH = ("validate", "train", "all")


def _shared_options(deadline_s: float, deadline_help: str) -> Callable[[Any], Any]:
    """Options predict and evaluate share: fail-over, deadline, token, TLS, log level."""
    options = [
        click.option("--coordinators", type=AddressListType(), default=None,
                     help="Fail-over list host:port,host:port tried after HOST:PORT."),
        click.option("--deadline-s", type=FiniteRange(min=0, min_open=True, max=86400),
                     default=deadline_s, show_default=True, help=deadline_help),
        token_options("sent with every call."),
        tls_options(serves=False),
        log_level_option("WARNING"),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _addresses(first: Address, more: list[Address] | None) -> list[Address]:
    return [first] + [a for a in (more or []) if a != first]


def _model(path: Path) -> ModelFile:
    try:
        return read_model_file(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _model_line(model: ModelFile) -> str:
    s = model.servable
    kind = "1 model" if len(s.members) == 1 else f"an ensemble of {len(s.members)} models"
    names = s.names()
    shown = f"{names[0]}..{names[-1]}" if len(names) > 3 else ",".join(names)
    return (f"model {model.path.name}: {kind}, {s.n_features} attributes, {s.n_classes} "
            f"classes ({shown}), sha256 {model.digest[:12]}")


@click.command(context_settings=SETTINGS)
@click.argument("coordinator", metavar="HOST:PORT", type=AddressType())
@click.argument("model_path", metavar="MODEL.npz",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("rows_path", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--proba", is_flag=True,
              help="Also print each row's class probabilities (a CSV with a header line).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the lines to this file instead of stdout.")
@click.option("--chunk-rows", type=click.IntRange(1, 1_000_000), default=4096, show_default=True,
              help="Rows per predict request (a large file goes in chunks).")
@_shared_options(10.0, "Seconds each request may take (queueing at the coordinator included).")
def predict_command(coordinator: Address, model_path: Path, rows_path: Path, proba: bool,
                    out_path: Path | None, chunk_rows: int, coordinators: list[Address] | None,
                    deadline_s: float, token: str, tls: TlsContexts, log_level: str) -> None:
    """Label the rows of FILE with the model MODEL.npz through the cluster: one class name
    per row, in row order.

    FILE is CSV: a row's attributes, optionally followed by its label (ignored), or the UCI
    format (a letter, then the attributes); the model's number of attributes tells which.
    The model file is uploaded once (by its sha256).
    """
    configure_logging(log_level, component="client")
    logging.getLogger("thrift").setLevel(logging.CRITICAL)  # failures are reported as one line
    model = _model(model_path)
    try:
        rows = read_rows(rows_path, model.servable.n_features)
    except RowError as exc:
        raise click.ClickException(str(exc)) from None
    link = ServingLink(_addresses(coordinator, coordinators), token, tls.client, deadline_s)
    try:
        labelled = link.predict(model, rows.x, probabilities=proba, chunk_rows=chunk_rows)
    except ServingFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        link.close()
    lines = prediction_lines(model.servable.names(), labelled.labels, labelled.probabilities)
    if out_path is None:
        for line in lines:
            click.echo(line)
        return
    try:
        with out_path.open("w") as f:
            for line in lines:
                f.write(line + "\n")
    except OSError as exc:
        raise click.ClickException(f"{out_path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {len(labelled.labels)} predictions to {out_path}")


def _evaluation_files(given: Path, which: str) -> list[Path]:
    """The files to score: FILE itself, or DATA_DIR's validate file, train files or both."""
    if given.is_file():
        return [given]
    try:
        data_dir, _ = resolve_data_dir(given)
        data = read_data_dir(data_dir)
    except (UnknownDataDir, DataError) as exc:
        raise click.ClickException(str(exc)) from None
    validate = sorted(data_dir.glob("validate_*.txt"))
    train = [path for path, _ in data.train]
    return {"validate": validate, "train": train, "all": train + validate}[which]


def _shards(files: list[Path], model: ModelFile) -> tuple[list[ShardRef], dict[str, Path]]:
    """ShardRefs of the files in order, checked against the model, and digest -> path."""
    refs: list[ShardRef] = []
    paths: dict[str, Path] = {}
    s = model.servable
    for path in files:
        try:
            dataset: Dataset = read_data_file(path, n_classes=s.n_classes)
        except DataError as exc:
            raise click.ClickException(f"{exc} (the model has {s.n_classes} classes)"
                                       if "out of range" in str(exc) else str(exc)) from None
        if dataset.n_features != s.n_features:
            raise click.ClickException(f"{path.name}: {dataset.n_features} attributes, the "
                                       f"model takes {s.n_features}")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        refs.append(ShardRef(name=path.name, digest=digest, n_rows=dataset.n_rows,
                             n_bytes=len(data)))
        paths[digest] = path
    return refs, paths


@click.command(context_settings=SETTINGS)
@click.argument("coordinator", metavar="HOST:PORT", type=AddressType())
@click.argument("model_path", metavar="MODEL.npz",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", metavar="DIR_OR_FILE", type=click.Path(path_type=Path))
@click.option("--which", type=click.Choice(WHICH), default="validate", show_default=True,
              help="For a data directory: its validate file, its training shards, or all.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write per_class.csv and confusion.png (needs matplotlib) here.")
@_shared_options(60.0, "Seconds the evaluation may take.")
def evaluate_command(coordinator: Address, model_path: Path, data: Path, which: str,
                     out_dir: Path | None, coordinators: list[Address] | None,
                     deadline_s: float, token: str, tls: TlsContexts, log_level: str) -> None:
    """Score the model MODEL.npz on labelled data through the cluster: error, mean loss and
    per-class precision and recall.

    DIR_OR_FILE is a data file (numeric or UCI format), or a data directory (or `letters`,
    the built-in dataset), whose validate file is scored unless --which says otherwise: the
    rows training reports its validation error on.
    """
    configure_logging(log_level, component="client")
    logging.getLogger("thrift").setLevel(logging.CRITICAL)
    if out_dir is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException("--out draws confusion.png with matplotlib, which is not "
                                   "installed: pip install matplotlib, or leave out --out")
    model = _model(model_path)
    files = _evaluation_files(data, which)
    refs, paths = _shards(files, model)
    link = ServingLink(_addresses(coordinator, coordinators), token, tls.client, deadline_s)
    try:
        scores = link.evaluate(model, refs, paths)
    except ServingFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        link.close()
    names = model.servable.names()
    shown = ", ".join(p.name for p in files[:3]) + (f" and {len(files) - 3} more"
                                                    if len(files) > 3 else "")
    click.echo(_model_line(model))
    click.echo(f"data: {shown} ({scores.n_rows} rows)")
    click.echo(evaluation_text(scores, names))
    if out_dir is None:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_table_csv(out_dir / "per_class.csv", scores, names)
        plot_confusion(out_dir / "confusion.png", scores, names,
                       f"{model.path.name} on {shown}: error {scores.error:.2%}")
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out_dir}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out_dir / 'per_class.csv'} and {out_dir / 'confusion.png'}")
