"""One shard task's training: check the request, run mlcore, return the weights delta.

Everything a caller can get wrong is checked here before any time is spent, with a
message naming the field, so the node answers "invalid request" rather than failing
halfway, and a request beyond the node's work bound (epochs x rows x parameters) is
refused before it starts. Training itself is mlcore's, which releases the GIL for the whole
loop and stops at the task's time limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compute_node.shards import Shard
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from mlcore.model import Params, TrainingTimeout, TrainOutcome, check_prox_mu, train
from mlcore.shapes import mlp_dims
from mlcore.standardize import check_standardization
from runtime.budget import OutOfTime

# Activations for n rows take about n * (h + k) doubles several times over; bound the
# product so one request cannot make the node swap (64M values = 512 MB per copy).
MAX_ACTIVATION_VALUES = 64 * 1024 * 1024


class InvalidTask(ValueError):
    """The request itself is wrong (weights, hyperparameters, sizes): the caller must fix it."""


class ShardMismatch(ValueError):
    """The shard does not fit the model (feature count, labels >= k)."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one task, as sent in TrainConfig."""

    epochs: int
    eta: float
    batch_size: int = 0
    momentum: float = 0.0
    seed: int = 1
    # Input standardisation x' = (x - shift) * scale; both empty = raw attributes (the seed's).
    feature_shift: tuple[float, ...] = ()
    feature_scale: tuple[float, ...] = ()
    # FedProx's proximal term: each step's gradient gains prox_mu * (w - the given weights);
    # 0 = none (the bits of plain training). mlcore.model.train documents the choices.
    prox_mu: float = 0.0


@dataclass(frozen=True)
class TrainOutput:
    """Weights delta (new - given, order w1, b1, w2, b2) and what training measured."""

    delta: list[np.ndarray]
    n_samples: int
    loss: float
    error: float
    compute_s: float


def params_from_arrays(arrays: Sequence[np.ndarray]) -> Params:
    """Build Params from [w1 (d,h), b1 (h,), w2 (h,k), b2 (k,)]; InvalidTask naming what is off."""
    try:
        mlp_dims([a.shape for a in arrays])
    except ValueError as exc:
        raise InvalidTask(f"weights: {exc}") from None
    # No copy: training copies the weights it starts from (mlcore.model.train), and read-only
    # views of the received bytes (idl.tensors) stay untouched for the delta.
    return Params(*(np.ascontiguousarray(a, dtype=np.float64) for a in arrays))


def check_settings(settings: TrainSettings, d: int | None = None) -> None:
    """Raise InvalidTask naming the first hyperparameter out of range.

    With d (the model's input width) the standardisation lists are checked too: both empty,
    or both d finite values.
    """
    if settings.epochs < 1:
        raise InvalidTask(f"config.epochs must be >= 1, got {settings.epochs}")
    if not (math.isfinite(settings.eta) and settings.eta > 0):
        raise InvalidTask(f"config.eta must be a finite number > 0, got {settings.eta}")
    if settings.batch_size < 0:
        raise InvalidTask(
            f"config.batch_size must be >= 0 (0 = full batch), got {settings.batch_size}"
        )
    if not (math.isfinite(settings.momentum) and 0 <= settings.momentum < 1):
        raise InvalidTask(f"config.momentum must be in [0, 1), got {settings.momentum}")
    if not 0 <= settings.seed < 2**63:
        raise InvalidTask(f"config.seed must be in [0, 2**63), got {settings.seed}")
    try:
        check_prox_mu(settings.prox_mu, settings.eta)
    except ValueError as exc:
        raise InvalidTask(f"config.{exc}") from None
    if d is not None and (settings.feature_shift or settings.feature_scale):
        try:
            check_standardization(settings.feature_shift, settings.feature_scale, d)
        except ValueError as exc:
            raise InvalidTask(f"config.{exc}") from None


def check_shard_fits(shard: Shard, d: int, k: int, shard_name: str) -> None:
    """ShardMismatch (a dataset error) unless the rows have d features and labels below k."""
    if shard.n_rows and shard.n_features != d:
        raise ShardMismatch(
            f"{shard_name}: rows have {shard.n_features} features but the model expects d = {d}"
        )
    too_big = np.flatnonzero(shard.y >= k)
    if too_big.size:
        i = int(too_big[0])
        raise ShardMismatch(
            f"{shard_name} line {i + 1}: label {int(shard.y[i])} out of range for a model "
            f"with k = {k} classes"
        )


def check_fit(params: Params, shard: Shard, shard_name: str) -> None:
    """The shard must have d features and labels < k; the work must fit in memory."""
    check_shard_fits(shard, params.d, params.k, shard_name)
    work = shard.n_rows * (params.h + params.k)
    if work > MAX_ACTIVATION_VALUES:
        raise InvalidTask(
            f"task too large for this node: n_rows * (h + k) = {work:,} values exceeds "
            f"{MAX_ACTIVATION_VALUES:,}; use a smaller h or smaller shards"
        )


def task_work(params: Params, n_rows: int, settings: TrainSettings) -> int:
    """The work bound's measure of a task: epochs x rows x parameters (d*h + h + h*k + k)."""
    n_params = params.d * params.h + params.h + params.h * params.k + params.k
    return settings.epochs * n_rows * n_params


def check_work(
    params: Params, n_rows: int, settings: TrainSettings, max_work: int = DEFAULT_MAX_TASK_WORK
) -> None:
    """InvalidTask naming the bound when epochs x rows x parameters exceeds `max_work`."""
    work = task_work(params, n_rows, settings)
    if work > max_work:
        raise InvalidTask(
            f"task too large for this node: epochs x rows x parameters = "
            f"{settings.epochs:,} x {n_rows:,} x {work // (settings.epochs * n_rows):,} = "
            f"{work:,} exceeds the node's bound of {max_work:,} (--max-task-work); "
            "use fewer epochs, smaller shards or a smaller model"
        )


def shard_inputs(shard: Shard, settings: TrainSettings) -> np.ndarray:
    """The rows training sees: ONE new float64 array for this task, standardised if asked.

    The cached shard keeps compact integers (compute_node.shards) and is shared by every later
    task (possibly with other statistics), so it is never modified; widening to float64 is
    folded into the standardisation: (x - shift) * scale computed from the integers gives
    the very same bits as mlcore.standardize.standardize on the float64 rows (each integer
    converts to float64 exactly, then the same two float64 operations in the same order).
    """
    if not (settings.feature_shift or settings.feature_scale):
        return np.ascontiguousarray(shard.x, dtype=np.float64)
    try:
        check_standardization(settings.feature_shift, settings.feature_scale, shard.n_features)
    except ValueError as exc:
        raise InvalidTask(f"config.{exc}") from None
    out = np.subtract(shard.x, np.asarray(settings.feature_shift, dtype=np.float64),
                      dtype=np.float64)
    out *= np.asarray(settings.feature_scale, dtype=np.float64)
    return out


def run_training(
    params: Params,
    shard: Shard,
    settings: TrainSettings,
    time_limit_s: float | None = None,
    budget_s: float | None = None,
) -> TrainOutput:
    """Train from `params` on the shard; the delta is new minus given, tensor by tensor.

    mlcore's train works on its own copy of the weights and leaves `params` as they are, so
    the delta is computed in place in that copy: no array beyond the trained weights.
    With `time_limit_s`, training stops once that many seconds have passed: OutOfTime,
    naming `budget_s` (the task's whole budget, of which the limit is what was left).
    """
    start = time.perf_counter()
    x = shard_inputs(shard, settings)
    outcome = _train_as_task(params, x, shard.y, settings, time_limit_s, budget_s)
    del x  # the task's float64 rows: freed before the delta is built and sent
    compute_s = time.perf_counter() - start
    return TrainOutput(
        delta=_delta_in_place(outcome.params, params),
        n_samples=shard.n_rows,
        loss=float(outcome.loss),
        error=float(outcome.error),
        compute_s=compute_s,
    )


def _train_as_task(
    params: Params, x: np.ndarray, y: np.ndarray, settings: TrainSettings,
    time_limit_s: float | None, budget_s: float | None,
) -> TrainOutcome:
    """mlcore's train, its errors told as the task's: OutOfTime or InvalidTask."""
    try:
        return train(
            params,
            x,
            y,
            epochs=settings.epochs,
            eta=settings.eta,
            batch_size=settings.batch_size,
            momentum=settings.momentum,
            seed=settings.seed,
            time_limit_s=time_limit_s,
            prox_mu=settings.prox_mu,
        )
    except TrainingTimeout as exc:
        budget = budget_s if budget_s is not None else exc.limit_s
        raise OutOfTime(
            f"task ran out of its time budget of {budget:.3g}s after {exc.epochs_done:,} of "
            f"{exc.epochs:,} epochs; the node stopped it (raise the coordinator's "
            "--task-timeout-s, or ask for less work)",
            budget,
        ) from None
    except (ValueError, FloatingPointError) as exc:
        # mlcore's argument checks and divergence (eta too large) are the request's fault.
        raise InvalidTask(f"training rejected the task: {exc}") from None


def _delta_in_place(trained: Params, given: Params) -> list[np.ndarray]:
    """trained - given, tensor by tensor, written over `trained` (train's own copy)."""
    delta = []
    for new, old in zip(trained.tensors(), given.tensors(), strict=True):
        if np.may_share_memory(new, old):  # mlcore's contract broken: never subtract in place
            raise RuntimeError("mlcore.model.train returned the given weights, not a copy")
        delta.append(np.subtract(new, old, out=new))
    return delta
