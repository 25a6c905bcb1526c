"""The Coordinator Thrift service: decode → service → encode, core errors mapped at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from thrift.Thrift import TException

from coordinator.executor import RoundFailed, TaskOutOfTime, TaskRejected
from coordinator.service import CoordinatorService, Denied, MissingShards
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
    Unauthorized,
)
from runtime.events import log_event
from runtime.shard_store import ShardError


@contextmanager
def declared_errors(call: str) -> Iterator[None]:
    """Turn the core's errors into the exceptions the IDL declares for `call`."""
    try:
        yield
    except Denied as exc:
        log_event("call_denied", call=call)
        raise Unauthorized(message=str(exc)) from None
    except (RequestError, ShardError) as exc:
        log_event("invalid_request", call=call, reason=exc)
        raise InvalidRequest(message=str(exc)) from None
    except MissingShards as exc:
        raise ShardMissing(message=str(exc), digest=exc.digests[0]) from None
    except RoundFailed as exc:  # also ConfigurationError: a node refused our token
        raise NoNodesAvailable(message=str(exc)) from None
    except TaskOutOfTime as exc:
        raise DeadlineExceeded(message=str(exc), budget_s=exc.budget_s) from None
    except TaskRejected as exc:
        error = exc.error
        if isinstance(error, InvalidRequest | DatasetError):
            raise error from None
        raise InvalidRequest(message=str(error)) from None


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
        with declared_errors("status"):
            self._service.authorize(token)
        return self._service.status()

    def missing_shards(self, digests: list[str], token: str = "") -> list[str]:
        with declared_errors("missing_shards"):
            self._service.authorize(token)
        return self._service.store.missing(list(digests or []))

    def put_shard(self, digest: str, data: bytes, token: str = "") -> None:
        with declared_errors("put_shard"):
            self._service.put_shard(digest or "", data or b"", token or "")

    def run_round(self, request: RoundRequest) -> RoundResult:
        if request is None:  # a message with the struct cut off; thrift passes None
            raise InvalidRequest(message="run_round: the request argument is missing")
        try:
            with declared_errors("run_round"):
                return self._service.run_round(request)
        except TException as exc:
            let_go(exc, request, "weights")  # see idl/cycles.py: ShardMissing holds no model
            raise

    def register_node(self, host: str, port: int, token: str = "") -> None:
        with declared_errors("register_node"):
            self._service.register_node(host or "", port or 0, token or "")
