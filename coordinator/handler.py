"""The Coordinator Thrift service: decode → service → encode, core errors mapped at the edge."""

from __future__ import annotations

from thrift.Thrift import TException

from coordinator.executor import NoNodeFinished, TaskRejected
from coordinator.service import CoordinatorService, MissingShards
from coordinator.validation import RequestError
from idl.cycles import let_go
from idl.gen import ttypes
from idl.gen.ttypes import ClusterStatus, RoundRequest, RoundResult
from runtime.budget import OutOfTime
from runtime.declared_errors import DENIED, Declared, EdgeHandler
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
    Declared((RequestError, ShardError), lambda exc: ttypes.InvalidRequest(message=str(exc)),
             "invalid_request"),
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

    def __init__(self, service: CoordinatorService) -> None:
        super().__init__(service.authorize, service.store, COORDINATOR_ERRORS)
        self._service = service

    def status(self, token: str = "") -> ClusterStatus:
        self.check_token("status", token)
        return self._service.status()

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        with self.declared("put_shard"):
            self._service.put_shard(digest or "", data or b"", token or "")

    def run_round(self, request: RoundRequest) -> RoundResult:
        if request is None:  # a message with the struct cut off; thrift passes None
            raise ttypes.InvalidRequest(message="run_round: the request argument is missing")
        try:
            with self.declared("run_round"):
                return self._service.run_round(request)
        except TException as exc:
            let_go(exc, request, "weights")  # see idl/cycles.py: ttypes.ShardMissing holds no model
            raise

    def register_node(self, host: str, port: int, token: str = "") -> None:
        with self.declared("register_node"):
            self._service.register_node(host or "", port or 0, token or "")
