"""The ComputeNode Thrift service: decode → core → encode, core errors mapped at the edge."""

from __future__ import annotations

import numpy as np
from thrift.Thrift import TException

from compute_node.node import Busy, Cancelled, ComputeNodeCore, MissingShard, MissingWeights, Task
from compute_node.serving import MissingModel, ModelError, NodeServing, model_store
from compute_node.trainer import InvalidTask, OutOfTime, ShardMismatch, TrainSettings
from idl.cycles import let_go
from idl.gen.ttypes import (
    DatasetError,
    DeadlineExceeded,
    EvaluateRequest,
    Evaluation,
    InvalidRequest,
    ModelMissing,
    NodeBusy,
    NodeLoad,
    Prediction,
    PredictRequest,
    ShardMissing,
    ShardTask,
    TaskCancelled,
    TaskResult,
    TaskTimings,
    Tensor,
    WeightsMissing,
)
from idl.tensors import WIRE_DTYPE, TensorError, decode_tensors, encode_tensor
from idl.weights import weights_digest
from mlcore.data import DataError
from runtime.declared_errors import DENIED, Declared, EdgeHandler, required
from runtime.serving_limits import ServingRequestError, check_deadline, check_rows
from runtime.shard_store import ShardError

VIEW_BYTES = 1 << 16  # a delta tensor this big leaves as a view of its array (_wire_view)

# The node's core errors → the exceptions the IDL declares (the first match wins).
NODE_ERRORS = (
    DENIED,
    Declared((InvalidTask, ShardError, TensorError, ModelError, ServingRequestError),
             lambda exc: InvalidRequest(message=str(exc)), "invalid_request"),
    Declared((ShardMismatch, DataError), lambda exc: DatasetError(message=str(exc)),
             "dataset_error"),
    Declared(MissingShard, lambda exc: ShardMissing(message=str(exc), digest=exc.digest)),
    Declared(MissingModel, lambda exc: ModelMissing(message=str(exc), digest=exc.digest)),
    Declared(MissingWeights, lambda exc: WeightsMissing(message=str(exc), digest=exc.digest)),
    Declared(Busy, lambda exc: NodeBusy(message=str(exc), retry_after_s=exc.retry_after_s),
             "task_declined"),
    Declared(OutOfTime, lambda exc: DeadlineExceeded(message=str(exc), budget_s=exc.budget_s)),
    Declared(Cancelled, lambda exc: TaskCancelled(message=str(exc))),
)


class ComputeNodeHandler(EdgeHandler):
    """Implements idl ComputeNode.Iface over a ComputeNodeCore (ping and missing_shards too)."""

    def __init__(
        self, core: ComputeNodeCore, address: str = "", serving: NodeServing | None = None
    ) -> None:
        super().__init__(core.authorize, core.store, NODE_ERRORS)
        self._core = core
        self._serving = serving or NodeServing(model_store(), core.store)
        self.address = address  # host:port, known once the server has bound its port

    def load(self, token: str = "") -> NodeLoad:
        self.check_token("load", token)
        return self.node_load()

    def node_load(self) -> NodeLoad:
        """The node's load for in-process readers (metrics), without a token."""
        snap = self._core.load_snapshot()
        return NodeLoad(
            tasks_in_flight=snap.tasks_in_flight,
            recent_service_s=snap.recent_service_s,
            load_probability=self._core.load.config.load_probability,
            tasks_done=snap.tasks_done,
            tasks_declined=snap.tasks_declined,
            shards_cached=self._core.store.n_available(),
        )

    def cancel(self, task_id: str, token: str = "") -> bool:
        """Take back a task not yet training (work stealing); unknown ids answer False."""
        self.check_token("cancel", token)
        return self._core.cancel(task_id or "")

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        self.check_token("put_shard", token)
        with self.declared("put_shard"):
            self._core.put_shard(digest or "", data or b"")

    def put_weights(self, digest: str, weights: list[Tensor], token: str = "") -> None:
        self.check_token("put_weights", token)
        with self.declared("put_weights"):
            tensors = list(weights or [])
            arrays = decode_tensors(tensors, name="weights", writable=False)
            self._core.put_weights(digest or "", weights_digest(tensors), arrays)

    def train(self, task: ShardTask) -> TaskResult:
        task = required(task, "train", "task")
        try:
            with self.declared("train"):
                self._core.authorize(task.token or "")
                report = self._core.train(_decode_task(task))
        except TException as exc:
            let_go(exc, task, "weights")  # see idl/cycles.py: a declined task holds no model
            raise
        # The received model (views of its frame) was kept for the delta only: let it go
        # before the reply copies the delta, or the node holds three models at once.
        task.weights = None
        out = report.output
        return TaskResult(
            delta=[_wire_view(a) for a in out.delta],
            n_samples=out.n_samples,
            train_loss=out.loss,
            train_error=out.error,
            timings=TaskTimings(
                load_delay_s=report.load_delay_s,
                compute_s=out.compute_s,
                wait_s=report.wait_s,
                total_s=report.total_s,
            ),
            node=self.address,
        )


    def missing_models(self, digests: list[str], token: str = "") -> list[str]:
        self.check_token("missing_models", token)
        return self._serving.models.missing(list(digests or []))

    def put_model(self, digest: str, data: bytes, token: str = "") -> None:
        self.check_token("put_model", token)
        with self.declared("put_model"):
            self._serving.put_model(digest or "", data or b"")

    def predict(self, request: PredictRequest) -> Prediction:
        request = required(request, "predict", "request")
        with self.declared("predict"):
            self._core.authorize(request.token or "")
            check_deadline(request.deadline_s, 10.0)
            servable = self._serving.model(request.model or "")
            rows = check_rows(request.rows, servable.n_features)
            out = self._serving.predict(servable, rows, bool(request.probabilities))
        return Prediction(
            labels=out.labels.tolist(),
            probabilities=encode_tensor(out.probabilities) if out.probabilities is not None
            else Tensor(shape=[], data=b""),
            node=self.address,
            batch_rows=len(rows),
        )

    def evaluate(self, request: EvaluateRequest) -> Evaluation:
        request = required(request, "evaluate", "request")
        with self.declared("evaluate"):
            self._core.authorize(request.token or "")
            check_deadline(request.deadline_s, 60.0)
            servable = self._serving.model(request.model or "")
            shards = [(s.name or "", s.digest or "") for s in request.shards or [] if s]
            scores = self._serving.evaluate(servable, shards)
        return Evaluation(
            n_rows=scores.n_rows, n_errors=scores.n_errors, summed_loss=scores.summed_loss,
            n_classes=servable.n_classes, confusion=scores.confusion.ravel().tolist(),
        )


def _wire_view(array: np.ndarray) -> Tensor:
    """A Tensor over the array's own bytes, no copy, when it is bulk and wire-ready.

    The delta is training's own buffer, used for nothing else: sent by reference, the
    reply costs no second model (the node holds the round's weights meanwhile). Small
    arrays are copied to bytes, which the C codec takes.
    """
    if array.nbytes >= VIEW_BYTES and array.dtype == WIRE_DTYPE and array.flags.c_contiguous:
        return Tensor(shape=[int(n) for n in array.shape], data=array.data.cast("B"))
    return encode_tensor(array)


def _decode_task(task: ShardTask) -> Task:
    """Thrift ShardTask → core Task; InvalidTask/TensorError when a required part is absent."""
    weights = decode_tensors(task.weights, name="weights", writable=False)
    config = task.config
    if config is None or config.epochs is None or config.eta is None:
        raise InvalidTask("config: epochs and eta are required")
    if task.shard is None or not task.shard.digest:
        raise InvalidTask("shard: a ShardRef with the shard's sha256 digest is required")
    settings = TrainSettings(
        epochs=config.epochs,
        eta=config.eta,
        batch_size=config.batch_size if config.batch_size is not None else 0,
        momentum=config.momentum if config.momentum is not None else 0.0,
        seed=config.seed if config.seed is not None else 1,
        feature_shift=tuple(config.feature_shift or ()),
        feature_scale=tuple(config.feature_scale or ()),
        prox_mu=config.prox_mu if config.prox_mu is not None else 0.0,
    )
    return Task(
        digest=task.shard.digest,
        shard_name=task.shard.name or "",
        weights=weights,
        settings=settings,
        may_decline=bool(task.may_decline),
        timeout_s=task.timeout_s if task.timeout_s is not None else 0.0,
        weights_digest=task.weights_digest or "",
        task_id=task.task_id or "",
    )
