"""Command line: python -m letters generate | split | stats."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from letters import DEFAULT_SAMPLES, DEFAULT_SHARDS, DEFAULT_VALIDATE
from mlcore.data import DataError
from runtime.cli import run_cli

_LAYOUT_HELP = (
    "The last VALIDATE rows form validate_letters.txt; the rows before them are cut, in "
    "order, into SHARDS files train_letters1.txt .. train_lettersSHARDS.txt. If they do not "
    "divide evenly, the first (remainder) shards get one row more."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The letter-recognition dataset: generate, split and summarise data files."""


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(min=2), default=DEFAULT_SAMPLES, show_default=True,
              help="Rows in all (training + validation).")
@click.option("--shards", type=click.IntRange(min=1), default=DEFAULT_SHARDS, show_default=True)
@click.option("--validate", type=click.IntRange(min=1), default=DEFAULT_VALIDATE,
              show_default=True, help="Rows in validate_letters.txt (the last rows).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Same seed, same bytes (whatever the other options' chunking).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in OUT_DIR.")
def generate(out_dir: Path, samples: int, shards: int, validate: int, seed: int,
             overwrite: bool) -> None:
    """Render Hershey-font capitals with random distortions into OUT_DIR.

    Classes are balanced; rows are streamed to disk, so memory stays bounded at any size.
    """
    from letters.generator import generate_dataset

    try:
        paths = generate_dataset(out_dir, n_samples=samples, n_shards=shards,
                                 n_validate=validate, seed=seed, overwrite=overwrite,
                                 progress=sys.stderr.isatty())
    except (ValueError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"wrote {len(paths)} files ({samples:,} rows) to {out_dir}")


generate.help = (generate.help or "") + "\n\n" + _LAYOUT_HELP


@cli.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--shards", type=click.IntRange(min=1), default=DEFAULT_SHARDS, show_default=True)
@click.option("--validate", type=click.IntRange(min=1), default=DEFAULT_VALIDATE,
              show_default=True, help="Rows in validate_letters.txt (the last rows).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in OUT_DIR.")
def split(source: Path, out_dir: Path, shards: int, validate: int, overwrite: bool) -> None:
    """Convert SOURCE (UCI letter-first or numeric format) into the layout in OUT_DIR.

    Row order is kept, so the result is deterministic.
    """
    from letters.split import split_file

    try:
        paths = split_file(source, out_dir, shards, validate, overwrite=overwrite)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"wrote {len(paths)} files to {out_dir}")


split.help = (split.help or "") + "\n\n" + _LAYOUT_HELP


@cli.command()
@click.argument("path", metavar="DIR_OR_FILE", type=click.Path(exists=True, path_type=Path))
def stats(path: Path) -> None:
    """Print per-attribute mean/std/min/max and class counts of a file or dataset directory."""
    from letters.stats import describe, load_any

    try:
        data, n_files = load_any(path)
    except (DataError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"{path}: {data.n_rows:,} rows, {data.n_features} attributes, {n_files} file(s)")
    click.echo(describe(data))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m letters", argv)


if __name__ == "__main__":
    main()
