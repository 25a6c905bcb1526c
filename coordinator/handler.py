"""The Coordinator Thrift service: decode → service → encode, core errors mapped at the edge."""

from __future__ import annotations

from thrift.Thrift import TException

from coordinator.batcher import QueueFull
from coordinator.executor import NoNodeFinished, TaskRejected
from coordinator.models import MissingModel, ModelFileError
from coordinator.service import CoordinatorService, MissingShards
from coordinator.serving import Serving
from coordinator.validation import RequestError
from idl.cycles import let_go
from idl.gen import ttypes
from idl.gen.ttypes import (
    ClusterStatus,
    EvaluateRequest,
    Evaluation,
    ModelInfo,
    Prediction,
    PredictRequest,
    RoundRequest,
    RoundResult,
)
from runtime.budget import OutOfTime
from runtime.declared_errors import DENIED, Declared, EdgeHandler, required
from runtime.serving_limits import ServingRequestError
from runtime.shard_store import ShardError


def _rejected(exc: TaskRejected) -> Exception:
    """A node's own declared verdict on the request, passed on as it came."""
    error = exc.error
    if isinstance(error, ttypes.InvalidRequest | ttypes.DatasetError):
        return error
    return ttypes.InvalidRequest(message=str(error))


# The coordinator's core errors → the exceptions the IDL declares (the first match wins).
COORDINATOR_ERRORS = (
    DENIED,
    Declared((RequestError, ShardError, ModelFileError, ServingRequestError),
             lambda exc: ttypes.InvalidRequest(message=str(exc)), "invalid_request"),
    Declared(MissingModel, lambda exc: ttypes.ModelMissing(message=str(exc), digest=exc.digest)),
    Declared(QueueFull, lambda exc: ttypes.Overloaded(message=str(exc),
                                                      retry_after_s=exc.retry_after_s),
             "overloaded"),
    Declared(MissingShards,
             lambda exc: ttypes.ShardMissing(message=str(exc), digest=exc.digests[0])),
    # also ConfigurationError: a node refused our token
    Declared(NoNodeFinished, lambda exc: ttypes.NoNodesAvailable(message=str(exc))),
    Declared(OutOfTime,
             lambda exc: ttypes.DeadlineExceeded(message=str(exc), budget_s=exc.budget_s)),
    Declared(TaskRejected, _rejected),
)


class CoordinatorHandler(EdgeHandler):
    """Implements idl Coordinator.Iface over a CoordinatorService (ping and missing_shards too)."""

    def __init__(self, service: CoordinatorService, serving: Serving | None = None) -> None:
        super().__init__(service.authorize, service.store, COORDINATOR_ERRORS)
        self._service = service
        self._serving = serving

    def status(self, token: str = "") -> ClusterStatus:
        self.check_token("status", token)
        return self._service.status()

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        with self.declared("put_shard"):
            self._service.put_shard(digest or "", data or b"", token or "")

    def run_round(self, request: RoundRequest) -> RoundResult:
        request = required(request, "run_round", "request")
        try:
            with self.declared("run_round"):
                return self._service.run_round(request)
        except TException as exc:
            let_go(exc, request, "weights")  # see idl/cycles.py: ttypes.ShardMissing holds no model
            raise

    def register_node(self, host: str, port: int, token: str = "") -> None:
        with self.declared("register_node"):
            self._service.register_node(host or "", port or 0, token or "")

    def put_model(self, data: bytes, name: str, token: str = "") -> ModelInfo:
        with self.declared("put_model"):
            return self.serving.put_model(data or b"", name or "", token or "")

    def missing_models(self, digests: list[str], token: str = "") -> list[str]:
        with self.declared("missing_models"):
            return self.serving.missing_models(list(digests or []), token or "")

    def list_models(self, token: str = "") -> list[ModelInfo]:
        with self.declared("list_models"):
            return self.serving.list_models(token or "")

    def predict(self, request: PredictRequest) -> Prediction:
        request = required(request, "predict", "request")
        with self.declared("predict"):
            return self.serving.predict(request)

    def evaluate(self, request: EvaluateRequest) -> Evaluation:
        request = required(request, "evaluate", "request")
        with self.declared("evaluate"):
            return self.serving.evaluate(request)

    @property
    def serving(self) -> Serving:
        if self._serving is None:  # a handler built without serving (unit tests)
            raise RequestError("this coordinator serves no models")
        return self._serving
