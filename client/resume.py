"""What to tell a person whose run stopped: what the checkpoint holds and how to go on."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from client.training import Interrupted, checkpoint_round

INTERRUPTED_EXIT = 130  # as a shell reports a process stopped by SIGINT


def resume_command(argv: Sequence[str] | None = None) -> str:
    """The command that was run (sys.argv by default), with --resume added if missing."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["python", "-m", "client", *args])


def resume_hint(checkpoint: Path | None, argv: Sequence[str] | None = None) -> str:
    """A sentence to append to a failure: only when a checkpoint exists to resume from."""
    held = checkpoint_round(checkpoint)
    if held is None:
        return ""
    return (f" The checkpoint keeps the last completed round ({held}, in {checkpoint}); once "
            f"that is fixed, continue with: {resume_command(argv)}")


def interrupted_message(stop: Interrupted, argv: Sequence[str] | None = None) -> str:
    """Ctrl-C: which rounds are done, what was saved, the command that continues the run."""
    done = f"interrupted after round {stop.rounds_done} of {stop.rounds}"
    if stop.rounds_done == 0:
        done = f"interrupted before round 1 of {stop.rounds} finished"
    if stop.checkpoint is None:
        return f"{done}; nothing was saved to resume from (--checkpoint PATH keeps every round)"
    held = checkpoint_round(stop.checkpoint)
    if held is None:
        return f"{done}; nothing was saved in {stop.checkpoint} yet: run the same command again"
    return f"{done}; {stop.checkpoint} holds round {held}. To continue: {resume_command(argv)}"


class InterruptedExit(click.ClickException):
    """Ctrl-C as one line on stderr and exit status 130."""

    exit_code = INTERRUPTED_EXIT
