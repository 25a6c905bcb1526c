"""Drive federated training: one request per round, FedAvg in shard order, validate, record.

Determinism: the weights after round r depend only on the data, the configuration
and the seed. Results come back in shard order and FedAvg sums in that order, so
neither the policy, the node count, arrival order nor retries change a bit.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from client.coordinator_link import CoordinatorLink, RoundFailed
from client.dataset import class_names_for, describe, empty_classes_warning, resolve_data_dir
from client.timing import TimingWriter
from idl.gen.ttypes import RoundRequest, RoundResult, ShardRef, TrainConfig
from idl.tensors import TensorError, decode_tensors, encode_tensors
from mlcore.checkpoint import load_model, write_npz
from mlcore.data import DataDir, read_data_dir
from mlcore.model import Params, check_prox_mu, error_rate, init_params
from mlcore.privacy import private_mean
from mlcore.schedule import LrSchedule, sample_shards, sample_size
from mlcore.servable import Servable, save_servable, shard_models
from mlcore.standardize import Standardization, fit_standardization
from mlcore.strategies import (
    MEAN_BASED,
    STATE_SLOTS,
    ServerState,
    StrategyOptions,
    aggregate,
    check_krum,
    server_step,
)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's weights, plus where its outputs go."""

    data_dir: Path
    rounds: int
    epochs: int
    hidden: int
    eta: float
    seed: int = 1
    batch_size: int = 0
    momentum: float = 0.0
    standardize: bool = False
    init: str = "uniform"
    policy: str = ""
    round_deadline_s: float = 600.0
    token: str = field(default="", repr=False)  # the secret: never in a repr or a log
    timing_path: Path = Path("timing.txt")
    checkpoint_path: Path | None = None
    model_out: Path | None = None
    resume: bool = False
    ensemble_out: Path | None = None  # the last round's shard models, as one ensemble
    class_names: str = "auto"  # see client.dataset.class_names_for
    strategy: str = "fedavg"  # see mlcore.strategies
    strategy_options: StrategyOptions = StrategyOptions()
    lr_schedule: LrSchedule = LrSchedule()  # the nodes' eta per round
    prox_mu: float = 0.0  # FedProx's proximal term in the nodes' training (0: none)
    fraction: float = 1.0  # of the shards trained each round (seeded sample)
    dp_clip: float | None = None  # differential privacy: clip each update to this L2 norm
    dp_noise_multiplier: float = 0.0  # and add N(0, (multiplier * clip)**2) to their sum
    dp_seed: int | None = field(default=None, repr=False)  # the noise's seed (None: seed)

    def identity(self, shard_digests: list[str],
                 standardization: Standardization | None = None) -> dict[str, object]:
        """What a checkpoint must match to be resumed: the maths, not the plumbing."""
        stats = standardization.to_meta() if standardization is not None else {}
        return {
            "data": hashlib.sha256("".join(shard_digests).encode()).hexdigest(),
            "epochs": self.epochs,
            "hidden": self.hidden,
            "eta": self.eta,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "momentum": self.momentum,
            "init": self.init,
            "standardize": self.standardize,
            **stats,
            **self.federated_identity(),
        }

    def federated_identity(self) -> dict[str, object]:
        """The strategy, schedule, sampling and privacy settings ({} for the defaults, so a
        checkpoint written before they existed still resumes)."""
        out: dict[str, object] = {}
        if self.strategy != "fedavg":
            out.update(strategy=self.strategy, **self.strategy_options.used_by(self.strategy))
        out.update(self.lr_schedule.identity(self.rounds))
        if self.prox_mu != 0.0:
            out["prox_mu"] = self.prox_mu
        if self.fraction != 1.0:
            out["fraction"] = self.fraction
        if self.dp_clip is not None:
            # The noise's own seed is a secret: the model file keeps only its digest.
            seed = ("seed" if self.dp_seed is None else
                    hashlib.sha256(f"fedcluster-dp-seed:{self.dp_seed}".encode()).hexdigest())
            out.update(dp_clip=self.dp_clip, dp_noise_multiplier=self.dp_noise_multiplier,
                       dp_seed=seed)
        return out


@dataclass
class RoundReport:
    round: int
    rounds: int
    validation_error: float
    train_loss: float
    seconds: float
    declined: int  # tries a loaded node declined (load-aware): not failures
    failed: int  # tries that failed (node dead, timed out, out of time) and went elsewhere
    coordinator: str
    policy: str


@dataclass
class RunSummary:
    params: Params
    reports: list[RoundReport] = field(default_factory=list)
    validation_error: float = float("nan")
    resumed_from: int = 0
    ensemble_error: float | None = None  # the shard models' ensemble, with --ensemble-out


class ResumeMismatch(ValueError):
    """The checkpoint belongs to another run (different data or hyperparameters)."""


class CheckpointError(ValueError):
    """--resume without a checkpoint, or a new run that would overwrite one."""


class Interrupted(Exception):
    """Ctrl-C: `rounds_done` of `rounds` are complete (and in the checkpoint, if any)."""

    def __init__(self, rounds_done: int, rounds: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted after round {rounds_done} of {rounds}")
        self.rounds_done = rounds_done
        self.rounds = rounds
        self.checkpoint = checkpoint


class ConfigError(ValueError):
    """Strategy, schedule, sampling or privacy settings that cannot run together."""


class AggregationFailed(RoundFailed):
    """The strategy could not make weights of the round's updates (nothing was applied)."""


class BadRoundResult(RoundFailed):
    """The coordinator's answer does not fit the round asked for: none of it is applied."""


def digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_refs(data: DataDir) -> tuple[list[ShardRef], dict[str, Path]]:
    """ShardRefs in shard order, and the digest -> path map used for uploads."""
    refs: list[ShardRef] = []
    paths: dict[str, Path] = {}
    for path, dataset in data.train:
        digest = digest_file(path)
        refs.append(ShardRef(name=path.name, digest=digest, n_rows=dataset.n_rows,
                             n_bytes=path.stat().st_size))
        paths[digest] = path
    return refs, paths


def checkpoint_round(path: Path | None) -> int | None:
    """The last completed round a checkpoint holds; None when there is none to read."""
    if path is None or not path.exists():
        return None
    try:
        return int(load_model(path)[1]["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_checkpoint(config: RunConfig) -> None:
    """--resume needs a checkpoint; a run without --resume never overwrites one."""
    ckpt = config.checkpoint_path
    if ckpt is None:
        return
    if config.resume and not ckpt.exists():
        raise CheckpointError(f"--resume: no checkpoint at {ckpt}; check the path, or drop "
                              "--resume to start a new run")
    if not config.resume and ckpt.exists():
        held = checkpoint_round(ckpt)
        what = f"holds round {held}" if held is not None else "exists"
        raise CheckpointError(f"checkpoint {ckpt} {what}: pass --resume to continue that run, "
                              "or remove the file to start over")


def _start_state(config: RunConfig, data: DataDir,
                 identity: dict) -> tuple[Params, int, ServerState]:
    """Fresh weights from the seed, or the last completed round's (and the strategy's
    state) from the checkpoint."""
    ckpt = config.checkpoint_path
    if config.resume and ckpt is not None:
        params, meta = load_model(ckpt)
        saved = meta.get("identity", {})
        if saved != identity:
            changed = sorted(k for k in identity.keys() | saved.keys()
                             if saved.get(k) != identity.get(k))
            raise ResumeMismatch(
                f"checkpoint {ckpt} was written by a run with different {', '.join(changed)}; "
                "use the original settings, or drop --resume to start over"
            )
        done = int(meta["round"])
        return params, done, _saved_state(ckpt, config.strategy, done)
    params = init_params(data.n_features, config.hidden, data.n_classes, config.seed,
                         scheme=config.init)
    return params, 0, ServerState()


def _saved_state(ckpt: Path, strategy: str, done: int) -> ServerState:
    """The strategy's state a checkpoint holds; ResumeMismatch if a slot it needs is missing."""
    try:
        with np.load(ckpt, allow_pickle=False) as archive:
            state = ServerState.from_arrays({k: archive[k] for k in archive.files
                                             if k.startswith("state_")})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ResumeMismatch(f"checkpoint {ckpt}: cannot read the strategy's state ({exc})"
                             ) from None
    missing = [slot for slot in STATE_SLOTS.get(strategy, ()) if slot not in state.slots]
    if done > 0 and missing:
        raise ResumeMismatch(f"checkpoint {ckpt} holds no {strategy} state "
                             f"({', '.join(missing)}); drop --resume to start over")
    return state


def _save_checkpoint(path: Path, params: Params, state: ServerState,
                     meta: dict[str, object]) -> None:
    """Weights, the strategy's state and meta, atomically: what --resume needs to go on."""
    arrays = dict(zip(("w1", "b1", "w2", "b2"), params.tensors(), strict=True))
    write_npz(path, meta, {**arrays, **state.to_arrays()})


def check_run(config: RunConfig, n_shards: int) -> None:
    """ConfigError unless the strategy, schedule, sampling and privacy settings fit together."""
    try:
        config.lr_schedule.check(config.eta, config.rounds)
        check_prox_mu(config.prox_mu, config.eta)  # round 1's eta is the largest
        m = sample_size(n_shards, config.fraction)
        if config.strategy in ("krum", "multi-krum"):
            krum_m = config.strategy_options.krum_m if config.strategy == "multi-krum" else 1
            check_krum(m, config.strategy_options.krum_f, krum_m)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.dp_clip is not None and config.strategy not in MEAN_BASED:
        raise ConfigError(f"differential privacy needs a mean-based strategy "
                          f"({', '.join(MEAN_BASED)}); {config.strategy} is not one")


def federated_notes(config: RunConfig, n_shards: int) -> list[str]:
    """One line per setting away from plain FedAvg, said before the first round."""
    notes = []
    if config.strategy != "fedavg":
        shown = {k: "updates - f" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
                 for k, v in config.strategy_options.used_by(config.strategy).items()}
        settings = ", ".join(f"{k} {v}" for k, v in shown.items())
        notes.append(f"strategy: {config.strategy}" + (f" ({settings})" if settings else ""))
    schedule = config.lr_schedule
    if schedule.kind == "step":
        notes.append(f"learning rate: step, times {schedule.gamma:g} every "
                     f"{schedule.step_rounds} rounds from {config.eta:g}")
    elif schedule.kind == "cosine":
        notes.append(f"learning rate: cosine from {config.eta:g} towards {schedule.lr_min:g} "
                     f"over {config.rounds} rounds")
    if config.prox_mu != 0.0:
        notes.append(f"FedProx: prox_mu {config.prox_mu:g} in the nodes' training")
    if config.fraction != 1.0:
        notes.append(f"sampling: {sample_size(n_shards, config.fraction)} of {n_shards} shards "
                     f"a round (fraction {config.fraction:g}, seeded)")
    if config.dp_clip is not None:
        m = sample_size(n_shards, config.fraction)
        z, c = config.dp_noise_multiplier, config.dp_clip
        notes.append(f"differential privacy: clipping norm {c:g}, noise multiplier {z:g} "
                     f"(noise std {z * c:g} on the sum of the round's {m} clipped updates, "
                     f"then divided by {m}); no privacy accountant, so no epsilon is claimed")
    return notes


def aggregate_round(config: RunConfig, params: Params, updates: list[tuple[Params, int]],
                    state: ServerState, round_no: int) -> tuple[Params, ServerState]:
    """The round's new weights and strategy state (the private mean first under DP)."""
    try:
        if config.dp_clip is None:
            return aggregate(config.strategy, params, updates, state, config.strategy_options)
        mean = private_mean(params, updates, clip=config.dp_clip,
                            noise_multiplier=config.dp_noise_multiplier,
                            seed=config.seed if config.dp_seed is None else config.dp_seed,
                            round_no=round_no)
        return server_step(config.strategy, params, mean, state, config.strategy_options)
    except ValueError as exc:
        raise AggregationFailed(f"round {round_no}: {config.strategy} could not aggregate the "
                                f"updates: {exc}") from None


def round_config(config: RunConfig, base: TrainConfig, round_no: int) -> TrainConfig:
    """The nodes' settings for round `round_no`: `base` with the schedule's eta."""
    eta = config.lr_schedule.eta(config.eta, round_no, config.rounds)
    return base if eta == config.eta else TrainConfig(**{**vars(base), "eta": eta})


def input_standardization(config: RunConfig, data: DataDir) -> Standardization | None:
    """Statistics from the training shards (in shard order) when the run standardises."""
    if not config.standardize:
        return None
    return fit_standardization([dataset.x for _, dataset in data.train])


def _read_data(config: RunConfig, on_note: Callable[[str], None],
               on_warning: Callable[[str], None]) -> tuple[DataDir, Path]:
    """The run's data (a built-in dataset when DATA_DIR names one), summarised in notes."""
    data_dir, note = resolve_data_dir(config.data_dir)
    if note:
        on_note(note)
    data = read_data_dir(data_dir)
    on_note(describe(data, data_dir))
    warning = empty_classes_warning(data)
    if warning:
        on_warning(warning)
    return data, data_dir


def run_rounds(
    config: RunConfig,
    link_factory: Callable[[dict[str, Path]], CoordinatorLink],
    on_round: Callable[[RoundReport], None] = lambda report: None,
    on_note: Callable[[str], None] = lambda line: None,
    on_warning: Callable[[str], None] = lambda line: None,
) -> RunSummary:
    """Run the configured rounds through the coordinators; return the final weights.

    `on_note` gets one-line notices before the first round (the data, a resume), and
    `on_warning` doubts about the data; Ctrl-C becomes Interrupted, saying how many rounds
    are complete.
    """
    check_checkpoint(config)
    data, data_dir = _read_data(config, on_note, on_warning)
    refs, paths = shard_refs(data)
    check_run(config, len(refs))
    stats = input_standardization(config, data)
    identity = config.identity([r.digest for r in refs], stats)
    params, done, state = _start_state(config, data, identity)
    if config.ensemble_out is not None and done >= config.rounds:
        raise CheckpointError(f"--ensemble-out: the checkpoint holds all {config.rounds} rounds "
                              "but not the last round's shard models; run more rounds, or "
                              "start over without --resume")
    names = class_names_for(data_dir, data, config.class_names)
    for line in federated_notes(config, len(refs)):
        on_note(line)
    if config.resume:
        on_note(f"resuming from checkpoint {config.checkpoint_path}: it holds round {done}"
                + (f", round {done + 1} of {config.rounds} is next" if done < config.rounds
                   else ""))
    # Validation rows go through the same transform the nodes apply to the training rows.
    val_x = stats.apply(data.validate.x) if stats is not None else data.validate.x
    model_meta = {"init": config.init,
                  "standardization": stats.to_meta() if stats is not None else None}
    summary = RunSummary(params=params, resumed_from=done)
    job_id = uuid.uuid4().hex[:12]
    train_config = TrainConfig(epochs=config.epochs, eta=config.eta, batch_size=config.batch_size,
                               momentum=config.momentum, seed=config.seed,
                               prox_mu=config.prox_mu,
                               feature_shift=list(stats.shift) if stats else [],
                               feature_scale=list(stats.scale) if stats else [])
    meta = {"job": job_id, "data_dir": data_dir, "shards": len(refs),
            "rows": sum(r.n_rows for r in refs), **asdict_str(config)}
    meta["data_dir"] = data_dir  # the directory read, also when DATA_DIR names a dataset
    timing = TimingWriter(config.timing_path, meta, append=done > 0)
    link = link_factory(paths)
    last_round: tuple[Params, list[tuple[Params, int]]] | None = None
    try:
        for round_no in range(done + 1, config.rounds + 1):
            started = time.perf_counter()
            # A pure function of (seed, round): a resumed run samples what the first would have.
            round_refs = [refs[i] for i in sample_shards(len(refs), config.fraction,
                                                         config.seed, round_no)]
            request = RoundRequest(
                job_id=job_id, round=round_no, weights=encode_tensors(params.tensors()),
                shards=round_refs, config=round_config(config, train_config, round_no),
                policy=config.policy, deadline_s=config.round_deadline_s, token=config.token,
            )
            result = link.run_round(request)
            # Checked whole before anything is applied: a bad answer fails the run with the
            # weights and the checkpoint of the last good round.
            updates = verified_updates(round_refs, params, result, round_no)
            if config.ensemble_out is not None:
                last_round = (params, updates)
            params, state = aggregate_round(config, params, updates, state, round_no)
            val_error = error_rate(params, val_x, data.validate.y)
            seconds = time.perf_counter() - started
            report = _report(round_no, config.rounds, result, val_error, seconds)
            _write_round(timing, round_no, result, report)
            summary.reports.append(report)
            # Reported first, checkpointed second: whatever saw a round (a terminal, the
            # gateway's registry) is at most one round ahead of the checkpoint, and a resumed
            # run redoes that round bit for bit; never a checkpointed round nobody saw.
            on_round(report)
            if config.checkpoint_path is not None:
                _save_checkpoint(config.checkpoint_path, params, state,
                                 {"round": round_no, "identity": identity, "job": job_id,
                                  **model_meta})
    except KeyboardInterrupt:
        completed = summary.reports[-1].round if summary.reports else done
        raise Interrupted(completed, config.rounds, config.checkpoint_path) from None
    finally:
        timing.close()
        link.close()
    summary.params = params
    summary.validation_error = error_rate(params, val_x, data.validate.y)
    served_meta = {"round": config.rounds, "identity": identity, "job": job_id,
                   "init": config.init, "shards": [r.name for r in refs]}
    if config.model_out is not None:
        save_servable(config.model_out, Servable(
            (params,), stats, names,
            {**served_meta, "kind": "fedavg", "validation_error": summary.validation_error},
        ))
    if config.ensemble_out is not None and last_round is not None:
        before, updates = last_round
        ensemble = Servable(shard_models(before, [delta for delta, _ in updates]), stats, names)
        summary.ensemble_error = ensemble.score(data.validate.x, data.validate.y).error
        save_servable(config.ensemble_out, Servable(
            ensemble.members, stats, names,
            {**served_meta, "kind": "ensemble", "validation_error": summary.ensemble_error,
             "shard_rows": [n for _, n in updates]},
        ))
    return summary


def verified_updates(
    shards: Sequence[ShardRef], params: Params, result: RoundResult, round_no: int | None = None
) -> list[tuple[Params, int]]:
    """The round's (delta, n_samples) in shard order, once all of `result` is checked.

    The client trusts nothing it did not compute: exactly one result per shard of the
    request (records name each shard index once, in order, and there are as many results
    as shards), every delta decodes to the model's shapes with finite values, n_samples is
    the shard's row count, loss and error are finite. Otherwise BadRoundResult, one line
    naming the shard and what is wrong. The deltas are read-only views of the received
    bytes, not copies (fedavg only reads them).
    """
    where = f"round {round_no}: " if round_no is not None else ""
    source = f"coordinator {result.coordinator}" if result.coordinator else "the coordinator"
    n = len(shards)

    def bad(index: int | None, what: str) -> BadRoundResult:
        if index is None:
            return BadRoundResult(f"{where}{source} sent a bad round result: {what}; "
                                  "nothing of it was applied.")
        return BadRoundResult(f"{where}{source} sent a bad result for shard {index} "
                              f"({shards[index].name}): {what}; nothing of it was applied.")

    results = list(result.results or [])
    records = list(result.records or [])
    indices = [rec.shard_index for rec in records]
    for index in indices:
        if not isinstance(index, int) or not 0 <= index < n:
            raise bad(None, f"a result for shard index {index!r}, but the round has {n} shards")
    counts = Counter(indices)
    for i in range(n):
        if counts[i] != 1:
            raise bad(i, "no result" if counts[i] == 0 else f"{counts[i]} results")
    for position, rec in enumerate(records):
        if rec.shard_index != position:
            raise bad(rec.shard_index, f"its record is in place {position}, not in shard order")
        if rec.shard != shards[position].name:
            raise bad(position, f"its record names shard {rec.shard!r}")
    if len(results) < n:
        raise bad(len(results), f"no result ({len(results)} results for {n} shards)")
    if len(results) > n:
        raise bad(None, f"{len(results)} results for {n} shards")

    want = [tuple(t.shape) for t in params.tensors()]
    updates: list[tuple[Params, int]] = []
    for i, (r, ref) in enumerate(zip(results, shards, strict=True)):
        if r is None:
            raise bad(i, "no result")
        try:
            delta = decode_tensors(r.delta, name="delta", writable=False)
        except TensorError as exc:
            raise bad(i, str(exc)) from None
        got = [tuple(t.shape) for t in delta]
        if got != want:
            raise bad(i, f"delta shapes {_shapes(got)} differ from the model's {_shapes(want)}")
        for what, value in (("n_samples", r.n_samples),
                            ("its record's n_samples", records[i].n_samples)):
            if value != ref.n_rows:
                raise bad(i, f"{what} is {value}, the shard has {ref.n_rows} rows")
        for what, value in (("train_loss", r.train_loss), ("train_error", r.train_error)):
            if not isinstance(value, float | int) or not math.isfinite(value):
                raise bad(i, f"{what} is {value!r}, not a finite number")
        updates.append((Params(*delta), ref.n_rows))
    return updates


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _report(round_no: int, rounds: int, result: RoundResult, val_error: float,
            seconds: float) -> RoundReport:
    n = sum(r.n_samples for r in result.results) or 1
    loss = sum(r.train_loss * r.n_samples for r in result.results) / n
    declined = sum(rec.declined or 0 for rec in result.records)
    failed = sum(len(rec.failures or []) for rec in result.records)
    return RoundReport(round_no, rounds, val_error, loss, seconds, declined, failed,
                       result.coordinator, result.policy)


def _write_round(timing: TimingWriter, round_no: int, result: RoundResult,
                 report: RoundReport) -> None:
    for rec in result.records:
        t = rec.timings
        node_total = t.total_s if t is not None else 0.0
        timing.write_row(
            kind="task", round=round_no, shard=rec.shard, node=rec.node,
            coordinator=result.coordinator, policy=result.policy, attempts=rec.attempts,
            declined=rec.declined or 0, failures=len(rec.failures or []),
            start_s=rec.start_s, end_s=rec.end_s,
            load_delay_s=t.load_delay_s if t else None, compute_s=t.compute_s if t else None,
            wait_s=t.wait_s if t else None,
            transfer_s=max(rec.end_s - rec.start_s - node_total, 0.0),
            n_samples=rec.n_samples, train_loss=rec.train_loss, train_error=rec.train_error,
        )
    timing.write_row(
        kind="round", round=round_no, coordinator=result.coordinator, policy=result.policy,
        attempts=sum(r.attempts for r in result.records),
        declined=report.declined, failures=report.failed,
        start_s=0.0, end_s=result.wall_s, n_samples=sum(r.n_samples for r in result.results),
        train_loss=report.train_loss, validation_error=report.validation_error,
        round_s=report.seconds,
    )
    timing.flush()


def asdict_str(config: RunConfig) -> dict[str, str]:
    """The configuration as strings for timing.txt's header (the secrets are never written:
    the token, the noise's seed)."""
    return {k: str(v) for k, v in asdict(config).items() if k not in ("token", "dp_seed")}
