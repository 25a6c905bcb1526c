"""python -m client COORDINATOR_IP COORDINATOR_PORT DATA_DIR ROUNDS EPOCHS H ETA [options]
   python -m client status HOST:PORT [options]
   python -m client predict HOST:PORT MODEL.npz FILE [options]
   python -m client evaluate HOST:PORT MODEL.npz DIR_OR_FILE [options]

The seed's positional usage (also spelled `python -m client train ...`), plus options for
seeds, outputs, resume and fail-over; `status`, the cluster as the coordinator sees it; and
`predict` / `evaluate`, a trained model file used through the cluster.
Checks live in the click types; the training core trusts what it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from client.coordinator_link import CoordinatorLink, RoundFailed
from client.dataset import ClassNamesError, UnknownDataDir
from client.federated_cli import federated_options
from client.progress import with_progress
from client.resume import InterruptedExit, interrupted_message, resume_hint
from client.serving_cli import evaluate_command, predict_command
from client.status import status_command
from client.training import (
    CheckpointError,
    ConfigError,
    Interrupted,
    ResumeMismatch,
    RoundReport,
    RunConfig,
    checkpoint_round,
    run_rounds,
)
from idl.rpc import Address
from idl.tensors import TensorError
from idl.tls import TlsContexts
from mlcore.data import DataError
from mlcore.model import INIT_SCHEMES
from runtime.cli import (
    AddressListType,
    FiniteRange,
    RenamedOption,
    log_level_option,
    run_cli,
    tls_options,
    token_options,
)
from runtime.events import configure_logging

POLICY_NAMES = {"1": "random", "2": "load-aware", "3": "round-robin"}


def _print_round(report: RoundReport) -> None:
    click.echo(
        f"round {report.round}/{report.rounds}  validation error {report.validation_error:.2%}"
        f"  train loss {report.train_loss:.4f}  time {report.seconds:.2f}s"
        f"  declined {report.declined}  failed {report.failed}"
    )


class TrainByDefault(click.Group):
    """A group whose first argument, when it names no subcommand, starts `train`'s.

    So the seed's `python -m client IP PORT DIR ROUNDS EPOCHS H ETA` works unchanged beside
    `python -m client status HOST:PORT`.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["train", *args]
        return super().parse_args(ctx, args)


@click.group(cls=TrainByDefault, context_settings={"help_option_names": ["-h", "--help"]},
             options_metavar="",
             subcommand_metavar="[train] COORDINATOR_IP COORDINATOR_PORT DATA_DIR ROUNDS EPOCHS H "
                                "ETA [OPTIONS] | status HOST:PORT [OPTIONS] | predict ... | "
                                "evaluate ...")
def cli() -> None:
    """Train an MLP across the cluster (the seed's command: `train` may be left out), show
    the cluster (`status`), or use a trained model through it (`predict`, `evaluate`).
    `python -m client COMMAND --help` lists a command's options."""


# ignore_unknown_options: a negative ETA ("-1") reaches its range check instead of
# being taken for an option.
@cli.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                               "ignore_unknown_options": True},
             epilog="To see the cluster: python -m client status HOST:PORT [--watch [SECONDS]].")
@click.argument("coordinator_ip")
@click.argument("coordinator_port", type=click.IntRange(1, 65535))
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("rounds", type=click.IntRange(min=1))
@click.argument("epochs", type=click.IntRange(min=1))
@click.argument("h", type=click.IntRange(min=1, max=1_000_000))
@click.argument("eta", type=FiniteRange(min=0, min_open=True))
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the initial weights.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Mini-batch size inside a node's epochs; 0 = the seed's full batch.")
@click.option("--momentum", type=FiniteRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Momentum of mini-batch SGD.")
@click.option("--standardize/--no-standardize", default=False, show_default=True,
              help="Standardise inputs with mean and std from the training shards "
                   "(stored with the model).")
@click.option("--init", "init", type=click.Choice(INIT_SCHEMES), default="uniform",
              show_default=True, help="Initial weights: the seed's uniform +-0.01, or He/Glorot.")
@click.option("--policy", type=click.Choice([*POLICY_NAMES, *POLICY_NAMES.values()]),
              default=None, help="Override the coordinator's scheduling policy for this run "
                                 "[the coordinator's].")
@click.option("--coordinators", type=AddressListType(), default=None,
              help="Fail-over list host:port,host:port tried after the first coordinator.")
@click.option("--timing", "timing_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("timing.txt"), show_default=True, help="Where to write timings.")
@click.option("--model-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the final model here (.npz: weights, standardisation, class names, "
                   "the run's identity).")
@click.option("--ensemble-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the last round's shard models (old weights + each shard's "
                   "delta) as one ensemble model file.")
@click.option("--class-names", default="auto", show_default=True,
              metavar="auto|letters|numbers|A,B,..",
              help="Class names stored with the model: auto is A..Z for the letters data "
                   "(validate_letters.txt or the UCI format, 26 classes), else 0..k-1.")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Checkpoint after every round (.npz); see --resume.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint's last round.")
@click.option("--deadline-s", "--deadline", "round_deadline_s", cls=RenamedOption,
              type=FiniteRange(min=0, min_open=True, max=86400), default=600.0,
              show_default=True, help="Seconds a round may take before it fails.")
@federated_options
@token_options("sent with every call.")
@tls_options(serves=False)
@log_level_option("WARNING")
def train(coordinator_ip: str, coordinator_port: int, data_dir: Path, rounds: int, epochs: int,
          h: int, eta: float, seed: int, batch_size: int, momentum: float, standardize: bool,
          init: str, policy: str | None,
          coordinators: list[Address] | None, timing_path: Path, model_out: Path | None,
          ensemble_out: Path | None, class_names: str,
          checkpoint_path: Path | None, resume: bool, round_deadline_s: float,
          federated: dict[str, Any], token: str, tls: TlsContexts, log_level: str) -> None:
    """Train an MLP with H hidden units across the cluster for ROUNDS rounds of EPOCHS epochs.

    DATA_DIR holds train_*.txt shards and one validate_*.txt file (one sample per line:
    integer attributes, then the class label). ETA is the learning rate.
    """
    configure_logging(log_level, component="client")
    if resume and checkpoint_path is None:
        raise click.UsageError("--resume needs --checkpoint PATH")
    first = Address(coordinator_ip, coordinator_port)
    addresses = [first] + [a for a in (coordinators or []) if a != first]
    config = RunConfig(
        data_dir=data_dir, rounds=rounds, epochs=epochs, hidden=h, eta=eta, seed=seed,
        batch_size=batch_size, momentum=momentum, standardize=standardize, init=init,
        policy=POLICY_NAMES.get(policy, policy) if policy else "",
        round_deadline_s=round_deadline_s, token=token, timing_path=timing_path,
        checkpoint_path=checkpoint_path, model_out=model_out, resume=resume,
        ensemble_out=ensemble_out, class_names=class_names, **federated,
    )
    try:
        links = with_progress(lambda paths: CoordinatorLink(addresses, paths, tls.client), rounds)
        summary = run_rounds(config, links, on_round=_print_round, on_note=click.echo,
                             on_warning=lambda line: click.echo(line, err=True))
    except (DataError, ResumeMismatch, TensorError, CheckpointError, UnknownDataDir,
            ClassNamesError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except RoundFailed as exc:
        raise click.ClickException(f"{exc}{resume_hint(checkpoint_path)}") from None
    except Interrupted as exc:
        raise InterruptedExit(interrupted_message(exc)) from None
    except KeyboardInterrupt:  # before the first round began
        stop = Interrupted(checkpoint_round(checkpoint_path) or 0, rounds, checkpoint_path)
        raise InterruptedExit(interrupted_message(stop)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    if summary.resumed_from and not summary.reports:
        click.echo(f"checkpoint already holds all {rounds} rounds")
    click.echo(f"final validation error {summary.validation_error:.2%}")
    if summary.ensemble_error is not None:
        click.echo(f"ensemble of the last round's shard models: validation error "
                   f"{summary.ensemble_error:.2%} ({ensemble_out})")


cli.add_command(status_command, "status")
cli.add_command(predict_command, "predict")
cli.add_command(evaluate_command, "evaluate")


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "python -m client", argv)


if __name__ == "__main__":
    main()
