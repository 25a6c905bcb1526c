"""Command line: python -m letters generate | split | stats."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from letters import DEFAULT_SAMPLES, DEFAULT_SHARDS, DEFAULT_VALIDATE
from mlcore.data import DataError
from runtime.cli import FiniteRange, run_cli

_LAYOUT_HELP = (
    "The last VALIDATE rows form validate_letters.txt; the rows before them are cut, in "
    "order, into SHARDS files train_letters1.txt .. train_lettersSHARDS.txt. If they do not "
    "divide evenly, the first (remainder) shards get one row more."
)
_NONIID_HELP = (
    "Non-IID shards (the validation rows never change): --shard-sizes lognormal:SIGMA draws "
    "each shard's relative size exp(N(0, SIGMA^2)) from the seed, W1,W2,... gives them "
    "(one per shard), and the training rows are cut in order into shards of those sizes. "
    "--dirichlet ALPHA deals each class's training rows (shuffled) to the shards in "
    "proportions drawn from Dirichlet(ALPHA x SHARDS x relative size), one draw per class "
    "from the seed: label skew, strong at 0.1, mild at 1, near IID at 100; shard sizes then "
    "follow --shard-sizes only on average. A shard left with no rows takes the last row of "
    "the largest one. Without either option the output is what it always was."
)


class ShardSizesType(click.ParamType):
    """--shard-sizes: equal, lognormal:SIGMA or W1,W2,... (letters.partition.SizeSpec)."""

    name = "equal|lognormal:SIGMA|W1,W2,..."

    def convert(self, value, param, ctx):
        from letters.partition import SizeSpec, parse_size_spec

        if isinstance(value, SizeSpec):
            return value
        try:
            return parse_size_spec(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def noniid_options(command):
    """--dirichlet and --shard-sizes, the same on generate and split."""
    command = click.option(
        "--shard-sizes", "shard_sizes", type=ShardSizesType(), default="equal",
        show_default=True, metavar="SPEC",
        help="Relative shard sizes: equal, lognormal:SIGMA (seeded; e.g. lognormal:1), or "
             "one positive number per shard (e.g. 4,2,1,1).")(command)
    return click.option(
        "--dirichlet", "dirichlet", type=FiniteRange(min=0, min_open=True), default=None,
        metavar="ALPHA",
        help="Label skew: each class's training rows go to the shards in proportions drawn "
             "from Dirichlet(ALPHA) (seeded); smaller is more skewed [off: IID].")(command)


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
              help="Same seed, same bytes (whatever the other options' chunking); it also "
                   "seeds the --dirichlet and --shard-sizes draws.")
@noniid_options
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in OUT_DIR.")
def generate(out_dir: Path, samples: int, shards: int, validate: int, seed: int,
             dirichlet: float | None, shard_sizes, overwrite: bool) -> None:
    """Render Hershey-font capitals with random distortions into OUT_DIR.

    Classes are balanced; rows are streamed to disk, so memory stays bounded at any size.
    """
    from letters.generator import generate_dataset

    try:
        paths = generate_dataset(out_dir, n_samples=samples, n_shards=shards,
                                 n_validate=validate, seed=seed, overwrite=overwrite,
                                 progress=sys.stderr.isatty(), dirichlet=dirichlet,
                                 sizes=shard_sizes)
    except (ValueError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"wrote {len(paths)} files ({samples:,} rows) to {out_dir}")


generate.help = "\n\n".join([inspect.cleandoc(generate.help or ""), _LAYOUT_HELP, _NONIID_HELP])


@cli.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--shards", type=click.IntRange(min=1), default=DEFAULT_SHARDS, show_default=True)
@click.option("--validate", type=click.IntRange(min=1), default=DEFAULT_VALIDATE,
              show_default=True, help="Rows in validate_letters.txt (the last rows).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the --dirichlet and --shard-sizes draws (unused without them).")
@noniid_options
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in OUT_DIR.")
def split(source: Path, out_dir: Path, shards: int, validate: int, seed: int,
          dirichlet: float | None, shard_sizes, overwrite: bool) -> None:
    """Convert SOURCE (UCI letter-first or numeric format) into the layout in OUT_DIR.

    Row order is kept, so the result is deterministic.
    """
    from letters.split import split_file

    try:
        paths = split_file(source, out_dir, shards, validate, overwrite=overwrite,
                           dirichlet=dirichlet, sizes=shard_sizes, seed=seed)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"wrote {len(paths)} files to {out_dir}")


split.help = "\n\n".join([inspect.cleandoc(split.help or ""), _LAYOUT_HELP, _NONIID_HELP])


@cli.command()
@click.argument("path", metavar="DIR_OR_FILE", type=click.Path(exists=True, path_type=Path))
def stats(path: Path) -> None:
    """Print per-attribute mean/std/min/max and class counts of a file or dataset directory.

    For a directory, then one line per training shard (rows, classes present, label entropy
    in bits, its largest class and that class's share) and a summary of the label skew.
    """
    from letters.stats import describe, load_any, shard_labels
    from mlcore.data import read_data_dir

    try:
        data, n_files = load_any(path)
        shards = shard_labels(read_data_dir(path)) if path.is_dir() else ""
    except (DataError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"{path}: {data.n_rows:,} rows, {data.n_features} attributes, {n_files} file(s)")
    click.echo(describe(data))
    if shards:
        click.echo(shards)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m letters", argv)


if __name__ == "__main__":
    main()
