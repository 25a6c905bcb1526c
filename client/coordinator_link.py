"""The client's side of the wire: run a round on the first coordinator that can.

A coordinator that lacks a shard says ShardMissing; the link uploads what it lacks
and asks again. A coordinator that cannot be reached, times out or drops the
connection is left for the next one in the list; only when every coordinator has
failed does the round fail.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from thrift.Thrift import TApplicationException, TException
from thrift.transport.TTransport import TTransportException

from idl.gen import ComputeNode, Coordinator
from idl.gen.ttypes import (
    DatasetError,
    DeadlineExceeded,
    InvalidRequest,
    NoNodesAvailable,
    RoundRequest,
    RoundResult,
    ShardMissing,
    Unauthorized,
)
from idl.rpc import Address, ConnectionPool, connect
from runtime.events import log_event

# Uploads and status calls are short; a round may take as long as its deadline.
SHORT_CALL_S = 30.0
ROUND_MARGIN_S = 10.0


class RoundFailed(RuntimeError):
    """A round could not be run; the message says why and what to do."""


class CoordinatorLink:
    """Runs rounds through a list of coordinators, failing over in order."""

    def __init__(
        self, coordinators: Sequence[Address], shard_paths: dict[str, Path],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not coordinators:
            raise ValueError("at least one coordinator address is needed")
        self._coordinators = list(coordinators)
        self._active = 0
        self._shard_paths = shard_paths  # digest -> file, for uploads on demand
        self.tls = tls  # also for the progress bar's status connection
        self._pool = ConnectionPool(Coordinator.Client, max_idle=2, tls=tls)

    @property
    def active(self) -> Address:
        return self._coordinators[self._active]

    def run_round(
        self, request: RoundRequest, on_failover: Callable[[Address, str], None] | None = None
    ) -> RoundResult:
        """Run one round, failing over between coordinators; RoundFailed when none can."""
        reasons: list[str] = []
        wrong = 0  # addresses where something else than a coordinator answered
        for _ in range(len(self._coordinators)):
            address = self.active
            try:
                return self._run_on(address, request)
            except (TTransportException, TApplicationException, OSError, EOFError) as exc:
                reason = _describe(exc)
                if _unknown_method(exc):
                    wrong += 1
                    reason = self._not_a_coordinator(address, request.token or "")
                reasons.append(reason if reason.startswith(str(address)) else
                               f"{address}: {reason}")
                log_event("coordinator_failed", coordinator=str(address), reason=reason)
                self._pool.discard(address)
                self._active = (self._active + 1) % len(self._coordinators)
                if on_failover:
                    on_failover(address, reason)
        if wrong == len(reasons):
            raise RoundFailed("; ".join(reasons))
        raise RoundFailed(
            "no coordinator could run the round (" + "; ".join(reasons) + "); check that a "
            "coordinator is running at the address given"
        )

    def _not_a_coordinator(self, address: Address, token: str) -> str:
        """What answered a coordinator's call with "unknown method": a compute node, or else."""
        try:
            conn = connect(ComputeNode.Client, address, SHORT_CALL_S, self.tls)
            try:
                conn.client.load(token)
            finally:
                conn.close()
        except Unauthorized:
            pass  # a node that wants another token is still a node
        except (TException, OSError, EOFError):
            return f"{address} answers, but is not a coordinator (it does not know run_round)"
        return (f"{address} is a compute node, not a coordinator: give the coordinator's "
                "address (its `listening on` line)")

    def _run_on(self, address: Address, request: RoundRequest) -> RoundResult:
        timeout_s = request.deadline_s + ROUND_MARGIN_S
        uploaded: set[str] = set()
        while True:
            try:
                return self._pool.call(address, timeout_s, lambda c: c.run_round(request))
            except ShardMissing as exc:
                if exc.digest in uploaded or exc.digest not in self._shard_paths:
                    raise RoundFailed(f"coordinator {address} keeps missing shard "
                                      f"{exc.digest[:12]}: {exc.message}") from None
                uploaded |= self.upload_missing(address, request.token)
            except NoNodesAvailable as exc:
                raise RoundFailed(f"{exc.message} (coordinator {address})") from None
            except DeadlineExceeded as exc:  # the task's own size: another coordinator won't help
                raise RoundFailed(f"{exc.message} (coordinator {address})") from None
            except (InvalidRequest, DatasetError, Unauthorized) as exc:
                raise RoundFailed(f"coordinator {address} refused the round: "
                                  f"{exc.message}") from None

    def upload_missing(self, address: Address, token: str = "") -> set[str]:
        """Send the coordinator every shard it lacks; return the digests sent."""
        return upload_missing_shards(self._pool, address, self._shard_paths, token)

    def close(self) -> None:
        self._pool.close()


def upload_missing_shards(pool: ConnectionPool, address: Address, shard_paths: dict[str, Path],
                          token: str = "") -> set[str]:
    """Send the coordinator at `address` every shard of `shard_paths` (digest -> file) it
    lacks, asked by digest; return the digests sent. RoundFailed if it refuses the token."""
    digests = list(shard_paths)
    try:
        missing = pool.call(address, SHORT_CALL_S, lambda c: c.missing_shards(digests, token))
    except Unauthorized as exc:
        raise RoundFailed(f"coordinator {address} refused the client: {exc.message}") from None
    for digest in missing:
        if digest not in shard_paths:
            raise RoundFailed(f"coordinator {address} asked for shard {digest[:12]}, "
                              "which the client never named")
        data = shard_paths[digest].read_bytes()
        started = time.perf_counter()
        pool.call(address, SHORT_CALL_S,
                  functools.partial(_put_shard, digest=digest, data=data, token=token))
        log_event("shard_uploaded", coordinator=str(address), digest=digest[:12],
                  bytes=len(data), seconds=time.perf_counter() - started)
    return set(missing)


def _put_shard(client: Coordinator.Client, *, digest: str, data: bytes, token: str) -> None:
    client.put_shard(digest, data, token)


def _unknown_method(exc: BaseException) -> bool:
    return (isinstance(exc, TApplicationException)
            and exc.type == TApplicationException.UNKNOWN_METHOD)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TException) and getattr(exc, "message", None):
        return str(exc.message)
    return str(exc) or type(exc).__name__
