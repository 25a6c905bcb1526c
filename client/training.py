"""Drive federated training: one request per round, FedAvg in shard order, validate, record.

Determinism: the weights after round r depend only on the data, the configuration
and the seed. Results come back in shard order and FedAvg sums in that order, so
neither the policy, the node count, arrival order nor retries change a bit.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from client.coordinator_link import CoordinatorLink
from client.timing import TimingWriter
from idl.gen.ttypes import RoundRequest, RoundResult, ShardRef, TrainConfig
from idl.tensors import decode_tensors, encode_tensors
from mlcore.checkpoint import load_model, save_model
from mlcore.data import DataDir, read_data_dir
from mlcore.fedavg import fedavg
from mlcore.model import Params, error_rate, init_params


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
    policy: str = ""
    round_deadline_s: float = 600.0
    token: str = ""
    timing_path: Path = Path("timing.txt")
    checkpoint_path: Path | None = None
    model_out: Path | None = None
    resume: bool = False

    def identity(self, shard_digests: list[str]) -> dict[str, object]:
        """What a checkpoint must match to be resumed: the maths, not the plumbing."""
        return {
            "data": hashlib.sha256("".join(shard_digests).encode()).hexdigest(),
            "epochs": self.epochs,
            "hidden": self.hidden,
            "eta": self.eta,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "momentum": self.momentum,
        }


@dataclass
class RoundReport:
    round: int
    rounds: int
    validation_error: float
    train_loss: float
    seconds: float
    retries: int
    coordinator: str
    policy: str


@dataclass
class RunSummary:
    params: Params
    reports: list[RoundReport] = field(default_factory=list)
    validation_error: float = float("nan")
    resumed_from: int = 0


class ResumeMismatch(ValueError):
    """The checkpoint belongs to another run (different data or hyperparameters)."""


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


def _start_state(config: RunConfig, data: DataDir, identity: dict) -> tuple[Params, int]:
    """Fresh weights from the seed, or the last completed round's from the checkpoint."""
    ckpt = config.checkpoint_path
    if config.resume and ckpt is not None and ckpt.exists():
        params, meta = load_model(ckpt)
        saved = meta.get("identity", {})
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise ResumeMismatch(
                f"checkpoint {ckpt} was written by a run with different {', '.join(changed)}; "
                "use the original settings, or drop --resume to start over"
            )
        return params, int(meta["round"])
    return init_params(data.n_features, config.hidden, data.n_classes, config.seed), 0


def run_training(
    config: RunConfig,
    link_factory: Callable[[dict[str, Path]], CoordinatorLink],
    on_round: Callable[[RoundReport], None] = lambda report: None,
) -> RunSummary:
    """Run the configured rounds through the coordinators; return the final weights."""
    data = read_data_dir(config.data_dir)
    refs, paths = shard_refs(data)
    identity = config.identity([r.digest for r in refs])
    params, done = _start_state(config, data, identity)
    summary = RunSummary(params=params, resumed_from=done)
    job_id = uuid.uuid4().hex[:12]
    train_config = TrainConfig(epochs=config.epochs, eta=config.eta, batch_size=config.batch_size,
                               momentum=config.momentum, seed=config.seed)
    meta = {"job": job_id, "data_dir": config.data_dir, "shards": len(refs),
            "rows": sum(r.n_rows for r in refs), **asdict_str(config)}
    timing = TimingWriter(config.timing_path, meta, append=done > 0)
    link = link_factory(paths)
    try:
        for round_no in range(done + 1, config.rounds + 1):
            started = time.perf_counter()
            request = RoundRequest(
                job_id=job_id, round=round_no, weights=encode_tensors(params.tensors()),
                shards=refs, config=train_config, policy=config.policy,
                deadline_s=config.round_deadline_s, token=config.token,
            )
            result = link.run_round(request)
            params = aggregate(params, result)
            val_error = error_rate(params, data.validate.x, data.validate.y)
            seconds = time.perf_counter() - started
            report = _report(round_no, config.rounds, result, val_error, seconds)
            _write_round(timing, round_no, result, report)
            if config.checkpoint_path is not None:
                save_model(config.checkpoint_path, params,
                           {"round": round_no, "identity": identity, "job": job_id})
            summary.reports.append(report)
            on_round(report)
    finally:
        timing.close()
        link.close()
    summary.params = params
    summary.validation_error = error_rate(params, data.validate.x, data.validate.y)
    if config.model_out is not None:
        save_model(config.model_out, params,
                   {"round": config.rounds, "identity": identity,
                    "validation_error": summary.validation_error})
    return summary


def aggregate(params: Params, result: RoundResult) -> Params:
    """FedAvg over the round's results, which the coordinator returns in shard order."""
    updates = [
        (Params.from_tensors(decode_tensors(r.delta, name=f"delta of shard {i}")), r.n_samples)
        for i, r in enumerate(result.results)
    ]
    return fedavg(params, updates)


def _report(round_no: int, rounds: int, result: RoundResult, val_error: float,
            seconds: float) -> RoundReport:
    n = sum(r.n_samples for r in result.results) or 1
    loss = sum(r.train_loss * r.n_samples for r in result.results) / n
    retries = sum(max(rec.attempts - 1, 0) for rec in result.records)
    return RoundReport(round_no, rounds, val_error, loss, seconds, retries,
                       result.coordinator, result.policy)


def _write_round(timing: TimingWriter, round_no: int, result: RoundResult,
                 report: RoundReport) -> None:
    for rec in result.records:
        t = rec.timings
        node_total = t.total_s if t is not None else 0.0
        timing.write_row(
            kind="task", round=round_no, shard=rec.shard, node=rec.node,
            coordinator=result.coordinator, policy=result.policy, attempts=rec.attempts,
            failures=len(rec.failures or []), start_s=rec.start_s, end_s=rec.end_s,
            load_delay_s=t.load_delay_s if t else None, compute_s=t.compute_s if t else None,
            wait_s=t.wait_s if t else None,
            transfer_s=max(rec.end_s - rec.start_s - node_total, 0.0),
            n_samples=rec.n_samples, train_loss=rec.train_loss, train_error=rec.train_error,
        )
    timing.write_row(
        kind="round", round=round_no, coordinator=result.coordinator, policy=result.policy,
        attempts=sum(r.attempts for r in result.records),
        failures=sum(len(r.failures or []) for r in result.records),
        start_s=0.0, end_s=result.wall_s, n_samples=sum(r.n_samples for r in result.results),
        train_loss=report.train_loss, validation_error=report.validation_error,
        round_s=report.seconds,
    )
    timing.flush()


def asdict_str(config: RunConfig) -> dict[str, str]:
    """The configuration as strings for timing.txt's header (the token is never written)."""
    return {k: str(v) for k, v in asdict(config).items() if k != "token"}
