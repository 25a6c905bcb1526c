"""The coordinator's serving behind the Thrift handler: models held, predictions batched onto
nodes, evaluations spread over them.

Glue between the wire types and the cores (ModelShelf, Batcher, Placer, RoundExecutor).
A predict request is checked here, before it joins a batch (its rows' width and values,
its work), so one bad request never fails the others riding with it. A batch is the
requests' row bytes joined once, sent to one node by the policy (another if that node
fails), and the answer is cut back into each request's rows: labels by slicing,
probabilities by slicing their bytes. Rows pass through untouched. An evaluation runs one
task per shard through the round executor (retries, deadline), and the counts and summed
losses are added in shard order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.batcher import Batch, Batcher
from coordinator.executor import NoNodeFinished
from coordinator.models import HeldModel, ModelShelf
from coordinator.node_calls import EvalTask, NodeCaller
from coordinator.placement import Placer
from coordinator.policies import make_policy
from coordinator.service import CoordinatorService
from coordinator.validation import RequestError
from idl.gen.ttypes import (
    EvaluateRequest,
    Evaluation,
    ModelInfo,
    Prediction,
    PredictRequest,
    Tensor,
)
from runtime.serving_limits import (
    DEFAULT_MAX_PREDICT_WORK,
    check_deadline,
    check_rows,
    check_work,
)

DEFAULT_PREDICT_DEADLINE_S = 10.0  # the IDL's defaults, for a request that leaves them unset
DEFAULT_EVALUATE_DEADLINE_S = 60.0
_F8 = 8  # bytes per value on the wire


@dataclass(frozen=True)
class BatchSettings:
    """The coordinator's batching options (see coordinator/batcher.py)."""

    max_rows: int = 256  # <= 1: no batching
    wait_s: float = 0.002
    max_queued_rows: int = 65536
    senders: int = 4


class Serving:
    """put_model, missing_models, list_models, predict and evaluate, independent of the wire."""

    def __init__(
        self,
        service: CoordinatorService,
        models: ModelShelf,
        caller: NodeCaller,
        *,
        batching: BatchSettings | None = None,
        max_work: int = DEFAULT_MAX_PREDICT_WORK,
        max_attempts: int = 5,
        token: str = "",
    ) -> None:
        self._service = service
        self.models = models
        self._caller = caller
        self.max_work = max_work
        self._token = token
        self.counters = service.counters
        settings = batching or BatchSettings()
        self.batcher = Batcher(
            self._run_batch, max_rows=settings.max_rows, wait_s=settings.wait_s,
            max_queued_rows=settings.max_queued_rows, senders=settings.senders,
        )
        service.levels["models_cached"] = lambda: len(models.store)
        service.levels["predict_rows_held"] = self.batcher.held_rows
        # Its own policy instance: rounds pick with theirs under the executor's lock.
        self._placer = Placer(service.registry, make_policy(service.policy, service.seed),
                              max_attempts=max_attempts, counters=service.counters)

    def put_model(self, data: bytes, name: str, token: str) -> ModelInfo:
        """Check and hold a model file (ModelFileError, ShardError); what it is."""
        self._service.authorize(token)
        digest, held = self.models.put(data, name)
        self.counters.add("models_received")
        return _info(digest, name, held)

    def missing_models(self, digests: list[str], token: str) -> list[str]:
        self._service.authorize(token)
        return self.models.missing(digests)

    def list_models(self, token: str) -> list[ModelInfo]:
        self._service.authorize(token)
        return [_info(digest, name, held) for digest, name, held in self.models.listing()]

    def predict(self, request: PredictRequest) -> Prediction:
        """This request's rows labelled, batched with others for the same model."""
        self._service.authorize(request.token)
        deadline_s = check_deadline(request.deadline_s, DEFAULT_PREDICT_DEADLINE_S)
        held = self.models.get(request.model or "")
        rows = check_rows(request.rows, held.n_features)
        n_rows = len(rows)
        check_work(n_rows, held.n_parameters, self.max_work, "the coordinator")
        if n_rows == 0:
            shape = [0, held.n_classes] if request.probabilities else []
            return Prediction(labels=[], probabilities=Tensor(shape=shape, data=b""),
                              node="", batch_rows=0)
        assert request.rows is not None  # check_rows refused a missing one
        answer: Prediction = self.batcher.submit(
            request.model, request.rows.data, n_rows, bool(request.probabilities), deadline_s
        )
        return answer

    def _run_batch(self, batch: Batch) -> list[Prediction]:
        """One node's answer for the batch, cut into one Prediction per request, in order."""
        held = self.models.get(batch.key)
        parts = [r.rows for r in batch.requests]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        wire = PredictRequest(
            model=batch.key, rows=Tensor(shape=[batch.n_rows, held.n_features], data=data),
            probabilities=batch.probabilities, token=self._token,
        )

        def call(node: str, timeout_s: float) -> Prediction:
            wire.deadline_s = timeout_s  # attempts run one after another: the request is reused
            return self._caller.predict(node, wire, held.data, timeout_s)

        reply = self._placer.run(call, batch.deadline,
                                 f"prediction batch of {batch.n_rows} rows")
        self.counters.add("predict_batches")
        self.counters.add("predict_rows", batch.n_rows)
        return _split(reply, batch, held.n_classes)

    def evaluate(self, request: EvaluateRequest) -> Evaluation:
        """The model scored on the shards, one task per shard, sums in shard order."""
        self._service.authorize(request.token)
        deadline_s = check_deadline(request.deadline_s, DEFAULT_EVALUATE_DEADLINE_S)
        held = self.models.get(request.model or "")
        refs = [r for r in request.shards or [] if r is not None]
        if not refs:
            raise RequestError("evaluate: name at least one shard (ShardRef) to score on")
        tasks = self._eval_tasks(request.model, refs, held, deadline_s)
        policy = self._service.policy_for("")
        outcomes = self._service.executor.run(tasks, policy, deadline_s,
                                              label=f"evaluate/{request.model[:12]}")
        k = held.n_classes
        n_rows = n_errors = 0
        summed = 0.0
        confusion = [0] * (k * k)
        for outcome in outcomes:
            part: Evaluation = outcome.value
            if len(part.confusion or []) != k * k:
                raise NoNodeFinished(f"node {outcome.node} answered a malformed confusion matrix")
            n_rows += part.n_rows
            n_errors += part.n_errors
            summed += part.summed_loss
            confusion = [a + b for a, b in zip(confusion, part.confusion, strict=True)]
        self.counters.add("evaluations")
        return Evaluation(n_rows=n_rows, n_errors=n_errors, summed_loss=summed, n_classes=k,
                          confusion=confusion)

    def _eval_tasks(
        self, digest: str, refs: Sequence, held: HeldModel, deadline_s: float
    ) -> list[EvalTask]:
        """One task per shard with its bytes; MissingShards for any the store lacks."""
        tasks = []
        for ref, data in zip(refs, self._service.held_shards(refs), strict=True):
            check_work(max(ref.n_rows or 0, 0), held.n_parameters, self.max_work,
                       "the coordinator")
            one = EvaluateRequest(model=digest, shards=[ref], deadline_s=deadline_s,
                                  token=self._token)
            tasks.append(EvalTask(one, data, held.data))
        return tasks

    def close(self) -> None:
        self.batcher.close()


def _info(digest: str, name: str, held: HeldModel) -> ModelInfo:
    return ModelInfo(
        digest=digest, name=name, n_features=held.n_features, n_classes=held.n_classes,
        members=held.members, class_names=list(held.class_names), n_bytes=len(held.data),
    )


def _split(reply: Prediction, batch: Batch, k: int) -> list[Prediction]:
    """The batch's answer as one Prediction per request: labels and probability bytes sliced."""
    labels = reply.labels or []
    proba = reply.probabilities
    n = batch.n_rows
    if len(labels) != n or (batch.probabilities and (
            proba is None or list(proba.shape or []) != [n, k]
            or len(proba.data or b"") != n * k * _F8)):
        raise NoNodeFinished(f"node {reply.node} answered a malformed prediction for {n} rows")
    if len(batch.requests) == 1:
        if not batch.requests[0].probabilities:
            reply.probabilities = Tensor(shape=[], data=b"")
        reply.batch_rows = n
        return [reply]
    answers = []
    start = 0
    empty = Tensor(shape=[], data=b"")
    for request in batch.requests:
        end = start + request.n_rows
        probabilities = (
            Tensor(shape=[request.n_rows, k], data=bytes(proba.data[start * k * _F8:end * k * _F8]))
            if request.probabilities else empty
        )
        answers.append(Prediction(labels=labels[start:end], probabilities=probabilities,
                                  node=reply.node, batch_rows=n))
        start = end
    return answers
