"""The training command's federated options: strategy, learning-rate schedule, sampling, DP.

`federated_options` adds them to a command and hands it one `federated` argument, the
RunConfig fields they set. An option that does not apply to the chosen strategy or schedule
(`--beta2` with `--strategy median`) is a usage error rather than silently ignored, so its
default is None ("not given") and the real default is filled in here. The benchmarks reuse
the same declarations (`add_federated_options`) and turn the values back into the client's
arguments with `federated_argv`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import click

from mlcore.model import MAX_PROX_MU
from mlcore.schedule import SCHEDULES, LrSchedule
from mlcore.strategies import MEAN_BASED, STRATEGIES, USES, StrategyOptions
from runtime.cli import FiniteRange

_OPEN_UNIT = FiniteRange(0, 1, max_open=True)

# (option, parameter type, shown default, help); None as the real default means "not given".
_OPTIONS: list[tuple[str, click.ParamType, object, str]] = [
    ("--strategy", click.Choice(STRATEGIES), "fedavg",
     "How the server combines the round's updates (see README, Federated strategies)."),
    ("--server-lr", FiniteRange(min=0, min_open=True), None,
     "Server learning rate of fedavgm [1] and of fedadam, fedyogi, fedadagrad [0.01]."),
    ("--server-momentum", _OPEN_UNIT, None, "Server momentum of fedavgm [0.9]."),
    ("--beta1", _OPEN_UNIT, None, "First-moment decay of fedadam, fedyogi, fedadagrad [0.9]."),
    ("--beta2", _OPEN_UNIT, None, "Second-moment decay of fedadam, fedyogi [0.99]."),
    ("--tau", FiniteRange(min=0, min_open=True), None,
     "Adaptivity (added to sqrt(v)) of fedadam, fedyogi, fedadagrad [0.001]."),
    ("--trim-fraction", FiniteRange(0, 0.5, max_open=True), None,
     "trimmed-mean: fraction of the updates dropped at each end, per coordinate [0.1]."),
    ("--krum-f", click.IntRange(min=0), None,
     "krum, multi-krum: assumed number of Byzantine updates a round [0]."),
    ("--krum-m", click.IntRange(min=1), None,
     "multi-krum: how many updates are kept and averaged [updates a round - f]."),
    ("--lr-schedule", click.Choice(SCHEDULES), "constant",
     "The nodes' learning rate over rounds: ETA throughout, times --lr-gamma every "
     "--lr-step-rounds rounds, or cosine from ETA towards --lr-min."),
    ("--lr-step-rounds", click.IntRange(min=1), None, "step schedule: rounds per step [10]."),
    ("--lr-gamma", FiniteRange(0, 1, min_open=True), None,
     "step schedule: factor per step [0.5]."),
    ("--lr-min", FiniteRange(min=0), None, "cosine schedule: the rate it tends to [0]."),
    ("--prox-mu", FiniteRange(min=0, max=MAX_PROX_MU), 0.0,
     "FedProx: the nodes add prox-mu * (w - the round's weights) to every step's summed "
     "gradient (the paper's mu times the rows per step); 0 = plain local SGD. prox-mu * ETA "
     "must be <= 1."),
    ("--fraction", FiniteRange(0, 1, min_open=True), 1.0,
     "Fraction of the shards trained each round: a sample seeded by --seed and the round, "
     "at least one shard."),
    ("--dp-clip", FiniteRange(min=0, min_open=True), None,
     "Differential privacy: clip each update to this L2 norm (all tensors together) [off]."),
    ("--dp-noise-multiplier", FiniteRange(min=0), None,
     "Differential privacy: Gaussian noise of std multiplier * clip on the sum of the clipped "
     "updates (needs --dp-clip) [0]."),
    ("--dp-seed", click.IntRange(0, 2**63 - 1), None,
     "Seed of the privacy noise; keep it secret (the model file keeps only its digest) "
     "[--seed]."),
]
STRATEGY_KEYS = ("server_lr", "server_momentum", "beta1", "beta2", "tau", "trim_fraction",
                 "krum_f", "krum_m")
SCHEDULE_KEYS = {"lr_step_rounds": "step", "lr_gamma": "step", "lr_min": "cosine"}


def _key(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def add_federated_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options alone: the command receives each one's value (None when not given)."""
    for option, kind, default, help_text in reversed(_OPTIONS):
        command = click.option(option, _key(option), type=kind, default=default,
                               show_default=default is not None, help=help_text)(command)
    return command


def federated_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options, handed to the command as one `federated` dict of RunConfig fields."""

    @functools.wraps(command)
    def with_federated(*args: Any, **kwargs: Any) -> Any:
        values = {_key(option): kwargs.pop(_key(option)) for option, *_ in _OPTIONS}
        return command(*args, federated=run_config_fields(values), **kwargs)

    return add_federated_options(with_federated)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run_config_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """RunConfig fields from the options' values; click.UsageError for one that does not apply."""
    strategy = values["strategy"]
    for key in STRATEGY_KEYS:
        if values[key] is not None and key not in USES[strategy]:
            users = [name for name in STRATEGIES if key in USES[name]]
            raise click.UsageError(f"{_flag(key)} applies to {', '.join(users)}, not to "
                                   f"--strategy {strategy}")
    for key, kind in SCHEDULE_KEYS.items():
        if values[key] is not None and values["lr_schedule"] != kind:
            raise click.UsageError(f"{_flag(key)} applies to --lr-schedule {kind}, not to "
                                   f"{values['lr_schedule']}")
    if values["dp_clip"] is not None and strategy not in MEAN_BASED:
        raise click.UsageError(f"--dp-clip needs a mean-based strategy ({', '.join(MEAN_BASED)}):"
                               f" noise on the sum means nothing to {strategy}")
    if values["dp_clip"] is None:
        for key in ("dp_noise_multiplier", "dp_seed"):
            if values[key] is not None:
                raise click.UsageError(f"{_flag(key)} needs --dp-clip")
    defaults = StrategyOptions()
    options = StrategyOptions(**{key: values[key] if values[key] is not None
                                 else getattr(defaults, key) for key in STRATEGY_KEYS})
    plain = LrSchedule()
    schedule = LrSchedule(
        kind=values["lr_schedule"],
        step_rounds=values["lr_step_rounds"] or plain.step_rounds,
        gamma=values["lr_gamma"] if values["lr_gamma"] is not None else plain.gamma,
        lr_min=values["lr_min"] if values["lr_min"] is not None else plain.lr_min,
    )
    return {
        "strategy": strategy, "strategy_options": options, "lr_schedule": schedule,
        "prox_mu": values["prox_mu"], "fraction": values["fraction"], "dp_clip": values["dp_clip"],
        "dp_noise_multiplier": values["dp_noise_multiplier"] or 0.0,
        "dp_seed": values["dp_seed"],
    }


def federated_argv(values: Mapping[str, Any]) -> list[str]:
    """The client's arguments for the options' values (defaults and unset ones left out)."""
    out: list[str] = []
    for option, _, default, _ in _OPTIONS:
        value = values.get(_key(option))
        if value is not None and value != default:
            out += [option, repr(value) if isinstance(value, float) else str(value)]
    return out

