"""The client with strategies, schedules, sampling, DP and FedProx: its options, its run's
identity, a round replayed bit for bit from mlcore alone, and --resume bitwise per strategy
through a real cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_training_e2e import model_bytes

from client.__main__ import cli
from client.coordinator_link import CoordinatorLink
from client.federated_cli import federated_argv, run_config_fields
from client.timing import read_timing
from client.training import (
    ConfigError,
    Interrupted,
    RoundReport,
    RunConfig,
    asdict_str,
    check_run,
    checkpoint_round,
    run_rounds,
)
from harness import REPO, LocalCluster
from mlcore.data import read_data_dir
from mlcore.model import Params, init_params, train
from mlcore.privacy import private_mean
from mlcore.schedule import LrSchedule, sample_shards
from mlcore.strategies import ServerState, StrategyOptions, server_step

N_SHARDS, ROWS, D, CLASSES = 8, 30, 5, 3
TRAIN = {"rounds": 4, "epochs": 2, "hidden": 6, "eta": 0.01}


def write_data(directory: Path) -> Path:
    """Eight small learnable shards and a validation file (class = argmax of a linear map)."""
    rng = np.random.default_rng(3)
    directory.mkdir(parents=True)
    weights = rng.standard_normal((D, CLASSES))

    def block(n: int) -> str:
        x = rng.integers(0, 16, size=(n, D))
        y = np.argmax((x - 7.5) @ weights, axis=1)
        return "".join(",".join(map(str, [*r, c])) + "\n" for r, c in zip(x, y, strict=True))

    for i in range(1, N_SHARDS + 1):
        (directory / f"train_{i}.txt").write_text(block(ROWS))
    (directory / "validate_v.txt").write_text(block(ROWS))
    return directory


def invoke(*options: str):
    """The client's train command in-process, up to its option checks (no cluster exists)."""
    args = ["train", "127.0.0.1", "1", "/nonexistent", "2", "1", "4", "0.1", *options]
    return CliRunner().invoke(cli, args)


# ------------------------------------------------------------------ options and identity


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--strategy", "median", "--beta2", "0.9"],
         "--beta2 applies to fedadam, fedyogi, not to --strategy median"),
        (["--server-lr", "0.1"], "--server-lr applies to fedavgm, fedadam, fedyogi, fedadagrad"),
        (["--strategy", "krum", "--krum-m", "2"], "--krum-m applies to multi-krum"),
        (["--lr-min", "0.001"], "--lr-min applies to --lr-schedule cosine, not to constant"),
        (["--lr-schedule", "cosine", "--lr-gamma", "0.5"],
         "--lr-gamma applies to --lr-schedule step"),
        (["--dp-noise-multiplier", "1"], "--dp-noise-multiplier needs --dp-clip"),
        (["--strategy", "krum", "--dp-clip", "1"], "--dp-clip needs a mean-based strategy"),
        (["--trim-fraction", "0.5", "--strategy", "trimmed-mean"], "0<=x<0.5"),
        (["--fraction", "0"], "0<x<=1"),
        (["--tau", "nan", "--strategy", "fedadam"], "finite"),
        (["--prox-mu", "-1"], "--prox-mu"),
    ],
)
def test_an_option_that_does_not_apply_or_is_out_of_range_is_a_usage_error(
    options: list[str], complaint: str,
) -> None:
    done = invoke(*options)

    assert done.exit_code == 2, done.output
    assert complaint in done.output, done.output


def fields(*options: str) -> dict:
    context = cli.commands["train"].make_context(
        "train", ["127.0.0.1", "1", "d", "2", "1", "4", "0.1", *options])
    keys = ("strategy", "server_lr", "server_momentum", "beta1", "beta2", "tau",
            "trim_fraction", "krum_f", "krum_m", "lr_schedule", "lr_step_rounds", "lr_gamma",
            "lr_min", "prox_mu", "fraction", "dp_clip", "dp_noise_multiplier", "dp_seed")
    return {key: context.params[key] for key in keys}


def test_options_fill_in_the_strategys_defaults_and_round_trip_through_argv() -> None:
    given = ["--strategy", "fedadam", "--beta1", "0.5", "--lr-schedule", "step",
             "--lr-gamma", "0.25", "--fraction", "0.5", "--dp-clip", "2.0",
             "--dp-noise-multiplier", "0.7", "--prox-mu", "3.0"]
    values = fields(*given)

    config = run_config_fields(values)

    assert config["strategy_options"] == StrategyOptions(beta1=0.5)
    assert config["strategy_options"].used_by("fedadam") == {
        "server_lr": 0.01, "beta1": 0.5, "beta2": 0.99, "tau": 0.001}
    assert config["lr_schedule"] == LrSchedule("step", step_rounds=10, gamma=0.25)
    assert (config["fraction"], config["dp_clip"], config["dp_noise_multiplier"],
            config["prox_mu"], config["dp_seed"]) == (0.5, 2.0, 0.7, 3.0, None)
    assert run_config_fields(fields(*federated_argv(values))) == config
    assert federated_argv(fields()) == []


def test_default_identity_is_the_one_checkpoints_had_before_strategies() -> None:
    plain = RunConfig(data_dir=Path("d"), rounds=3, epochs=1, hidden=4, eta=0.1)

    identity = plain.identity(["ab"])

    # These keys alone: a FedAvg checkpoint written before strategies existed still resumes.
    assert sorted(identity) == ["batch_size", "data", "epochs", "eta", "hidden", "init",
                                "momentum", "seed", "standardize"]


def test_identity_holds_what_changes_the_weights_and_never_the_noise_seed() -> None:
    config = RunConfig(data_dir=Path("d"), rounds=3, epochs=1, hidden=4, eta=0.1,
                       strategy="multi-krum", strategy_options=StrategyOptions(krum_f=1),
                       lr_schedule=LrSchedule("cosine", lr_min=0.01), fraction=0.5,
                       dp_clip=1.0, dp_noise_multiplier=0.5, dp_seed=123456789, prox_mu=2.0)

    identity = config.identity(["ab"])
    header = asdict_str(config)

    assert {k: identity[k] for k in ("strategy", "krum_f", "krum_m", "lr_schedule", "lr_min",
                                     "lr_rounds", "fraction", "dp_clip", "dp_noise_multiplier",
                                     "prox_mu")} == {
        "strategy": "multi-krum", "krum_f": 1, "krum_m": None, "lr_schedule": "cosine",
        "lr_min": 0.01, "lr_rounds": 3, "fraction": 0.5, "dp_clip": 1.0,
        "dp_noise_multiplier": 0.5, "prox_mu": 2.0}
    assert len(str(identity["dp_seed"])) == 64 and "123456789" not in str(identity)
    assert "dp_seed" not in header and "123456789" not in str(header)
    assert identity != replace(config, dp_seed=123456780).identity(["ab"])
    assert replace(config, dp_seed=None).identity(["ab"])["dp_seed"] == "seed"


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"strategy": "krum", "strategy_options": StrategyOptions(krum_f=2), "fraction": 0.75},
         "krum with f=2 assumed Byzantine updates needs at least 7 updates a round"),
        ({"strategy": "multi-krum", "strategy_options": StrategyOptions(krum_f=1, krum_m=9)},
         "multi-krum selects m in 1..8"),
        ({"prox_mu": 200.0}, "prox_mu * eta must be <= 1"),
        ({"lr_schedule": LrSchedule("cosine", lr_min=0.5)}, "minimum 0.5 must be in [0, ETA"),
        ({"strategy": "median", "dp_clip": 1.0}, "differential privacy needs a mean-based"),
    ],
)
def test_settings_that_cannot_run_together_are_refused_before_round_one(
    changes: dict, complaint: str,
) -> None:
    config = replace(RunConfig(data_dir=Path("d"), rounds=3, epochs=1, hidden=4, eta=0.01),
                     **changes)

    with pytest.raises(ConfigError) as refused:
        check_run(config, N_SHARDS)

    assert complaint in str(refused.value)


# ------------------------------------------------------------------ through a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("strategies-cluster"))
    try:
        for _ in range(2):
            cluster.add_node(0.0, "--load-delay-s", "0")
        cluster.add_coordinator("round-robin")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("strategies-data") / "data")


def config_for(data: Path, workdir: Path, **changes: object) -> RunConfig:
    workdir.mkdir(parents=True, exist_ok=True)
    return RunConfig(data_dir=data, **TRAIN, timing_path=workdir / "timing.txt",
                     checkpoint_path=workdir / "ckpt.npz", **changes)


def run(cluster: LocalCluster, config: RunConfig, stop_at: int | None = None):
    """run_rounds through the cluster; Ctrl-C (KeyboardInterrupt) while round `stop_at` is
    reported, i.e. before its checkpoint, as a person pressing it mid-run would."""

    def on_round(report: RoundReport) -> None:
        if report.round == stop_at:
            raise KeyboardInterrupt

    return run_rounds(config, lambda paths: CoordinatorLink([cluster.coordinator.address],
                                                             paths), on_round=on_round)


def bits(params: Params) -> bytes:
    return b"".join(t.tobytes() for t in params.tensors())


CASES = {
    "fedavg": {},
    "fedavgm": {"strategy": "fedavgm"},
    "fedadam": {"strategy": "fedadam", "strategy_options": StrategyOptions(server_lr=0.05)},
    "fedyogi": {"strategy": "fedyogi"},
    "fedadagrad": {"strategy": "fedadagrad"},
    "median": {"strategy": "median"},
    "trimmed-mean": {"strategy": "trimmed-mean",
                     "strategy_options": StrategyOptions(trim_fraction=0.25)},
    "krum": {"strategy": "krum", "strategy_options": StrategyOptions(krum_f=2)},
    "multi-krum": {"strategy": "multi-krum",
                   "strategy_options": StrategyOptions(krum_f=1, krum_m=4)},
    "fedadam+cosine+sample+dp+prox": {
        "strategy": "fedadam", "lr_schedule": LrSchedule("cosine", lr_min=0.001),
        "fraction": 0.5, "dp_clip": 0.5, "dp_noise_multiplier": 0.3, "prox_mu": 5.0},
    "fedavgm+step+sample": {"strategy": "fedavgm", "lr_schedule": LrSchedule("step", 2, 0.5),
                            "fraction": 0.75},
    "fedavg+dp-seed": {"dp_clip": 1.0, "dp_noise_multiplier": 1.0, "dp_seed": 77},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    cluster: LocalCluster, data: Path, tmp_path: Path, case: str,
) -> None:
    whole = run(cluster, config_for(data, tmp_path / "whole", **CASES[case]))
    part = config_for(data, tmp_path / "part", **CASES[case])
    with pytest.raises(Interrupted) as stopped:
        run(cluster, part, stop_at=3)
    assert stopped.value.rounds_done == 3 and checkpoint_round(part.checkpoint_path) == 2

    resumed = run(cluster, replace(part, resume=True))

    assert [r.round for r in resumed.reports] == [3, 4]
    assert bits(resumed.params) == bits(whole.params)
    assert [r.validation_error for r in resumed.reports] == [
        r.validation_error for r in whole.reports[2:]]


@pytest.mark.slow
def test_a_round_is_mlcore_alone_on_the_sampled_shards_with_the_rounds_eta(
    cluster: LocalCluster, data: Path, tmp_path: Path,
) -> None:
    settings = CASES["fedadam+cosine+sample+dp+prox"]
    config = config_for(data, tmp_path, **{**settings, "dp_seed": 5})

    summary = run(cluster, config)

    shards = read_data_dir(data).train
    params = init_params(D, TRAIN["hidden"], CLASSES, seed=config.seed)
    state = ServerState()
    for round_no in range(1, TRAIN["rounds"] + 1):
        eta = 0.001 + (0.01 - 0.001) * (1 + np.cos(np.pi * (round_no - 1) / 4)) / 2
        updates = []
        for i in sample_shards(N_SHARDS, 0.5, config.seed, round_no):
            _, shard = shards[i]
            trained = train(params, shard.x, shard.y, epochs=TRAIN["epochs"], eta=float(eta),
                            seed=config.seed, prox_mu=5.0)
            updates.append((Params.from_tensors([a - b for a, b in zip(
                trained.params.tensors(), params.tensors(), strict=True)]), shard.n_rows))
        mean = private_mean(params, updates, clip=0.5, noise_multiplier=0.3, seed=5,
                            round_no=round_no)
        params, state = server_step("fedadam", params, mean, state, config.strategy_options)
    _, rows = read_timing(config.timing_path)
    sampled = {r: sorted(row["shard"] for row in rows
                         if row["kind"] == "task" and row["round"] == str(r)) for r in (1, 2)}

    assert bits(summary.params) == bits(params)
    for r, names in sampled.items():
        assert names == sorted(f"train_{i + 1}.txt"
                               for i in sample_shards(N_SHARDS, 0.5, config.seed, r))


@pytest.mark.slow
def test_sampled_runs_repeat_bit_for_bit_and_differ_from_full_rounds(
    cluster: LocalCluster, data: Path, tmp_path: Path,
) -> None:
    first = run(cluster, config_for(data, tmp_path / "a", fraction=0.5))
    again = run(cluster, config_for(data, tmp_path / "b", fraction=0.5))
    full = run(cluster, config_for(data, tmp_path / "c"))

    assert bits(first.params) == bits(again.params) != bits(full.params)


def wait_for(condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_the_client_killed_mid_run_resumes_to_the_same_bits(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    slow_cluster = LocalCluster(tmp_path / "cluster")
    try:
        for _ in range(2):  # slow tasks: the client is surely killed before the last round
            slow_cluster.add_node(0.0, "--load-delay-s", "0", "--extra-latency-s", "0.2")
        coordinator = slow_cluster.add_coordinator("round-robin")
        options = ["--strategy", "fedyogi", "--lr-schedule", "cosine", "--fraction", "0.5",
                   "--dp-clip", "0.5", "--dp-noise-multiplier", "0.2"]

        def argv(workdir: Path, *extra: str) -> list[str]:
            workdir.mkdir(exist_ok=True)
            return [sys.executable, "-m", "client", coordinator.address.host,
                    str(coordinator.address.port), str(data), "6", "2", "6", "0.01", *options,
                    "--timing", str(workdir / "timing.txt"),
                    "--model-out", str(workdir / "model.npz"), *extra]

        whole = subprocess.run(argv(tmp_path / "whole"), capture_output=True, text=True,
                               timeout=120, cwd=REPO)
        ckpt = tmp_path / "part" / "ckpt.npz"
        victim = subprocess.Popen(argv(tmp_path / "part", "--checkpoint", str(ckpt)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            wait_for(lambda: (checkpoint_round(ckpt) or 0) >= 2, "round 2 in the checkpoint", 60)
        finally:
            victim.kill()
            victim.wait(timeout=10)
        held = checkpoint_round(ckpt)
        resumed = subprocess.run(argv(tmp_path / "part", "--checkpoint", str(ckpt), "--resume"),
                                 capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        slow_cluster.stop()

    assert whole.returncode == 0 and resumed.returncode == 0, whole.stderr + resumed.stderr
    assert held is not None and 2 <= held < 6
    assert "noise multiplier 0.2" in whole.stdout and "no epsilon is claimed" in whole.stdout
    assert f"round {held + 1}/6" in resumed.stdout and "round 1/6" not in resumed.stdout
    assert model_bytes(tmp_path / "part" / "model.npz") == model_bytes(
        tmp_path / "whole" / "model.npz")
