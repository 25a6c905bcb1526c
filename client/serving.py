"""The client's side of serving: put a model file in the cluster once, label rows with it,
score it on data files, failing over between coordinators as training does.

A model is named by the sha256 of its file's bytes: the client asks which digests a
coordinator lacks and uploads only those, so a model crosses the wire once per coordinator.
Data files to evaluate travel as shards, by digest, through the same path as training's.
Predictions are idempotent, so a chunk whose coordinator fails is asked again of the next.
Nothing a coordinator answers is trusted unchecked: label counts and ranges, probability
shapes and evaluation counts are checked before they are shown.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TTransportException

from client.coordinator_link import RoundFailed, upload_missing_shards
from idl.gen import Coordinator, ttypes
from idl.gen.ttypes import (
    EvaluateRequest,
    Evaluation,
    Prediction,
    PredictRequest,
    ShardRef,
)
from idl.rpc import Address, ConnectionPool
from idl.tensors import TensorError, decode_tensor, encode_tensor
from mlcore.servable import Scores, Servable, load_servable
from runtime.events import log_event

T = TypeVar("T")
# What the coordinator answers when the request itself cannot be served: said, not retried.
REFUSALS = (ttypes.InvalidRequest, ttypes.NoNodesAvailable, ttypes.DeadlineExceeded,
            ttypes.Unauthorized)
SHORT_CALL_S = 30.0
CALL_MARGIN_S = 10.0  # beyond a request's own deadline, for the reply to arrive
MAX_MODEL_BYTES = 200 * 1024 * 1024  # below the servers' default 256 MiB frame


class ServingFailed(RuntimeError):
    """A prediction or evaluation could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class ModelFile:
    """A model file as the cluster knows it: its bytes, their sha256, what they hold."""

    path: Path
    data: bytes
    digest: str
    servable: Servable

    @property
    def name(self) -> str:
        return self.path.name


def read_model_file(path: Path) -> ModelFile:
    """Read and check a model file; ValueError naming it if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes, more than a message may carry "
                         f"({MAX_MODEL_BYTES} bytes)")
    if not data.startswith(b"PK"):
        raise ValueError(f"{path}: not a model file (a model file is an .npz archive, as "
                         "`python -m client ... --model-out` writes)")
    servable = load_servable(data, str(path))
    return ModelFile(path, data, hashlib.sha256(data).hexdigest(), servable)


@dataclass(frozen=True)
class Labelled:
    """Predictions for rows in order: class indices and, when asked, probabilities (n, k)."""

    labels: np.ndarray
    probabilities: np.ndarray | None


class ServingLink:
    """Models, predictions and evaluations through a list of coordinators, in order."""

    def __init__(self, coordinators: Sequence[Address], token: str = "",
                 tls: ssl.SSLContext | None = None, deadline_s: float = 10.0) -> None:
        if not coordinators:
            raise ValueError("at least one coordinator address is needed")
        self._coordinators = list(coordinators)
        self._active = 0
        self._token = token
        self._deadline_s = deadline_s
        self._pool = ConnectionPool(Coordinator.Client, max_idle=2, tls=tls)
        self._held: set[tuple[Address, str]] = set()  # (coordinator, model digest) uploaded

    @property
    def active(self) -> Address:
        return self._coordinators[self._active]

    def close(self) -> None:
        self._pool.close()

    def predict(self, model: ModelFile, x: np.ndarray, probabilities: bool = False,
                chunk_rows: int = 4096) -> Labelled:
        """Label the rows of x (n, d) in chunks of at most `chunk_rows`, in row order."""
        labels: list[np.ndarray] = []
        proba: list[np.ndarray] = []
        for start in range(0, len(x), chunk_rows):
            chunk = x[start:start + chunk_rows]
            request = PredictRequest(model=model.digest, rows=encode_tensor(chunk),
                                     probabilities=probabilities, deadline_s=self._deadline_s,
                                     token=self._token)
            answer = self._failover("predict", functools.partial(self._predict_on, model=model,
                                                                 request=request))
            got_labels, got_proba = _checked_prediction(answer, len(chunk), model, probabilities,
                                                        start)
            labels.append(got_labels)
            if got_proba is not None:
                proba.append(got_proba)
        k = model.servable.n_classes
        return Labelled(
            np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
            (np.concatenate(proba) if proba else np.zeros((0, k))) if probabilities else None,
        )

    def evaluate(self, model: ModelFile, shards: list[ShardRef],
                 paths: dict[str, Path]) -> Scores:
        """Score the model on the shards (uploaded by digest where missing), summed in order."""
        request = EvaluateRequest(model=model.digest, shards=shards,
                                  deadline_s=self._deadline_s, token=self._token)
        answer = self._failover("evaluate",
                                lambda a: self._evaluate_on(a, model, request, paths))
        return _checked_scores(answer, model, sum(s.n_rows for s in shards))

    def register(self, model: ModelFile) -> Address:
        """Put the model in the cluster now, on the first coordinator that takes it.

        Predictions would upload it on demand; registering at once moves that cost (and any
        refusal) to when the model is made, not to its first user.
        """
        self._failover("register the model", lambda a: self._ensure_model(a, model))
        return self.active

    def _failover(self, what: str, call: Callable[[Address], T]) -> T:
        reasons: list[str] = []
        for _ in range(len(self._coordinators)):
            address = self.active
            try:
                return call(address)
            except (TTransportException, TApplicationException, OSError, EOFError) as exc:
                if (isinstance(exc, TApplicationException)
                        and exc.type == TApplicationException.UNKNOWN_METHOD):
                    reason = (f"{address} does not serve models (it does not know {what}): "
                              "is it a coordinator of this version?")
                else:
                    detail = getattr(exc, "message", None) or exc or type(exc).__name__
                    reason = f"{address}: {detail}"
                reasons.append(reason)
                log_event("coordinator_failed", coordinator=str(address), call=what,
                          reason=reason)
                self._pool.discard(address)
                self._held = {held for held in self._held if held[0] != address}
                self._active = (self._active + 1) % len(self._coordinators)
        raise ServingFailed(f"no coordinator could {what} (" + "; ".join(reasons) + "); check "
                            "that a coordinator is running at the address given")

    def _ensure_model(self, address: Address, model: ModelFile, force: bool = False) -> None:
        """Upload the model to `address` unless it already holds it (asked by digest)."""
        if not force and (address, model.digest) in self._held:
            return
        token = self._token
        try:
            missing = self._pool.call(address, SHORT_CALL_S,
                                      lambda c: c.missing_models([model.digest], token))
            if force or model.digest in (missing or []):
                started = time.perf_counter()
                self._pool.call(address, SHORT_CALL_S + len(model.data) / 50e6,
                                lambda c: c.put_model(model.data, model.name, token))
                log_event("model_uploaded", coordinator=str(address), digest=model.digest[:12],
                          bytes=len(model.data), seconds=time.perf_counter() - started)
        except ttypes.Unauthorized as exc:
            raise ServingFailed(f"coordinator {address} refused the client: "
                                f"{exc.message}") from None
        except ttypes.InvalidRequest as exc:
            raise ServingFailed(f"coordinator {address} refused the model {model.path}: "
                                f"{exc.message}") from None
        self._held.add((address, model.digest))

    def _predict_on(self, address: Address, *, model: ModelFile,
                    request: PredictRequest) -> Prediction:
        self._ensure_model(address, model)
        give_up = time.monotonic() + self._deadline_s
        reloaded = False
        while True:
            try:
                return self._pool.call(address, self._deadline_s + CALL_MARGIN_S,
                                       lambda c: c.predict(request))
            except ttypes.ModelMissing:
                if reloaded:  # uploaded a moment ago and gone again: the cache cannot hold it
                    raise ServingFailed(f"coordinator {address} keeps losing model "
                                        f"{model.digest[:12]} ({model.name})") from None
                self._ensure_model(address, model, force=True)
                reloaded = True
            except ttypes.Overloaded as exc:
                wait_s = min(max(exc.retry_after_s or 0.0, 0.001), give_up - time.monotonic())
                if wait_s <= 0:
                    raise ServingFailed(f"coordinator {address} stayed overloaded for the "
                                        f"deadline ({self._deadline_s:g} s): {exc.message}; try "
                                        "again later or with a longer --deadline-s") from None
                time.sleep(wait_s)
            except REFUSALS as exc:
                raise ServingFailed(_refusal(address, "the prediction", exc)) from None

    def _evaluate_on(self, address: Address, model: ModelFile, request: EvaluateRequest,
                     paths: dict[str, Path]) -> Evaluation:
        self._ensure_model(address, model)
        try:
            upload_missing_shards(self._pool, address, paths, self._token)
        except RoundFailed as exc:
            raise ServingFailed(str(exc)) from None
        retried = False
        while True:
            try:
                return self._pool.call(address, self._deadline_s + CALL_MARGIN_S,
                                       lambda c: c.evaluate(request))
            except (ttypes.ShardMissing, ttypes.ModelMissing) as exc:
                if retried:
                    raise ServingFailed(f"coordinator {address} keeps missing "
                                        f"{exc.digest[:12]}: {exc.message}") from None
                retried = True
                if isinstance(exc, ttypes.ModelMissing):
                    self._ensure_model(address, model, force=True)
                else:
                    try:
                        upload_missing_shards(self._pool, address, paths, self._token)
                    except RoundFailed as failed:
                        raise ServingFailed(str(failed)) from None
            except (*REFUSALS, ttypes.DatasetError) as exc:
                raise ServingFailed(_refusal(address, "the evaluation", exc)) from None


def _refusal(address: Address, what: str, exc: BaseException) -> str:
    message = getattr(exc, "message", None) or type(exc).__name__
    if isinstance(exc, ttypes.DeadlineExceeded):
        return f"{what} ran out of time at coordinator {address}: {message}; try a longer " \
               "--deadline-s"
    if isinstance(exc, ttypes.NoNodesAvailable):
        return f"{message} (coordinator {address})"
    return f"coordinator {address} refused {what}: {message}"


def _checked_prediction(answer: Prediction, n: int, model: ModelFile, probabilities: bool,
                        start: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The answer's labels (int64) and probabilities, once they fit the rows asked about."""
    k = model.servable.n_classes
    where = f"rows {start + 1}..{start + n}"
    labels = np.asarray(answer.labels or [], dtype=np.int64)
    if labels.shape != (n,):
        raise ServingFailed(f"the cluster sent {labels.size} labels for {n} rows ({where})")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ServingFailed(f"the cluster sent a label outside 0..{k - 1} ({where})")
    if not probabilities:
        return labels, None
    try:
        proba = decode_tensor(answer.probabilities, name="probabilities", writable=False) \
            if answer.probabilities is not None else np.zeros(0)
    except TensorError as exc:
        raise ServingFailed(f"the cluster sent bad probabilities ({where}): {exc}") from None
    if proba.shape != (n, k):
        raise ServingFailed(f"the cluster sent probabilities of shape {list(proba.shape)}, "
                            f"expected {[n, k]} ({where})")
    return labels, proba


def _checked_scores(answer: Evaluation, model: ModelFile, n_rows: int) -> Scores:
    """The evaluation as Scores, once its counts agree with each other and the data."""
    k = model.servable.n_classes
    confusion = np.asarray(answer.confusion or [], dtype=np.int64)
    problems = []
    if answer.n_classes != k or confusion.size != k * k:
        problems.append(f"{answer.n_classes} classes and {confusion.size} confusion cells "
                        f"for a model of {k} classes")
    elif (confusion < 0).any() or int(confusion.sum()) != answer.n_rows:
        problems.append("the confusion matrix does not add up to the rows")
    elif answer.n_errors != answer.n_rows - int(np.trace(confusion.reshape(k, k))):
        problems.append("the error count disagrees with the confusion matrix")
    if answer.n_rows != n_rows:
        problems.append(f"{answer.n_rows} rows scored, the data has {n_rows}")
    if not np.isfinite(answer.summed_loss or 0.0):
        problems.append("the loss is not finite")
    if problems:
        raise ServingFailed("the cluster sent an inconsistent evaluation: " + "; ".join(problems))
    return Scores(int(answer.n_rows), int(answer.n_errors), float(answer.summed_loss),
                  confusion.reshape(k, k))
