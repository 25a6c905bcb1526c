"""The Coordinator Thrift service: decode → service → encode, core errors mapped at the edge."""

from __future__ import annotations

from thrift.Thrift import TException

from coordinator.executor import NoNodeFinished, TaskRejected
from coordinator.service import CoordinatorService, MissingShards
from coordinator.validation import RequestError
from idl.cycles import let_go
from idl.gen.ttypes import (
    ClusterStatus,
    DatasetError,
    DeadlineExceeded,
    InvalidRequest,
    NoNodesAvailable,
    RoundRequest,
    RoundResult,
    ShardMissing,
)
from runtime.budget import OutOfTime
from runtime.declared_errors import DENIED, Declared, declared_errors
from runtime.shard_store import ShardError


def _rejected(exc: TaskRejected) -> Exception:
    """A node's own declared verdict on the request, passed on as it came."""
    error = exc.error
    if isinstance(error, InvalidRequest | DatasetError):
        return error
    return InvalidRequest(message=str(error))


# The coordinator's core errors → the exceptions the IDL declares (the first match wins).
COORDINATOR_ERRORS = (
    DENIED,
    Declared((RequestError, ShardError), lambda exc: InvalidRequest(message=str(exc)),
             "invalid_request"),
    Declared(MissingShards, lambda exc: ShardMissing(message=str(exc), digest=exc.digests[0])),
    # also ConfigurationError: a node refused our token
    Declared(NoNodeFinished, lambda exc: NoNodesAvailable(message=str(exc))),
    Declared(OutOfTime, lambda exc: DeadlineExceeded(message=str(exc), budget_s=exc.budget_s)),
    Declared(TaskRejected, _rejected),
)


class CoordinatorHandler:
    """Implements idl Coordinator.Iface over a CoordinatorService.

    Every call but ping() checks the token: ping stays open for health probes and says
    nothing beyond "up".
    """

    def __init__(self, service: CoordinatorService) -> None:
        self._service = service

    def ping(self) -> bool:
        return True

    def status(self, token: str = "") -> ClusterStatus:
        with declared_errors("status", COORDINATOR_ERRORS):
            self._service.authorize(token)
        return self._service.status()

    def missing_shards(self, digests: list[str], token: str = "") -> list[str]:
        with declared_errors("missing_shards", COORDINATOR_ERRORS):
            self._service.authorize(token)
        return self._service.store.missing(list(digests or []))

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        with declared_errors("put_shard", COORDINATOR_ERRORS):
            self._service.put_shard(digest or "", data or b"", token or "")

    def run_round(self, request: RoundRequest) -> RoundResult:
        if request is None:  # a message with the struct cut off; thrift passes None
            raise InvalidRequest(message="run_round: the request argument is missing")
        try:
            with declared_errors("run_round", COORDINATOR_ERRORS):
                return self._service.run_round(request)
        except TException as exc:
            let_go(exc, request, "weights")  # see idl/cycles.py: ShardMissing holds no model
            raise

    def register_node(self, host: str, port: int, token: str = "") -> None:
        with declared_errors("register_node", COORDINATOR_ERRORS):
            self._service.register_node(host or "", port or 0, token or "")
