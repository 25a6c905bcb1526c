"""Calls from the coordinator to compute nodes, with Thrift errors sorted for the executor.

This is the executor's `call_node`: it trains a task on one node over a pooled
connection, uploads the shard once when the node says it lacks it, sends the round's
weights to each node once (below), and turns what went wrong into NodeBusyError (try
another node), NodeFailure (node is at fault), TaskRejected (the request is at fault),
OutOfTime (the node stopped the task at its time budget) or ConfigurationError (the node
refused the coordinator's token).

Weights once per node and round: a round's tasks carry no weights, only their digest
(ShardTask.weights_digest). The first task of the round to reach a node sends them with
put_weights on its own connection, pipelined: put_weights and train leave back to back
and their answers come back in order, so the upload costs no round trip of its own. The
round's other tasks for that node wait only until that put_weights request is sent, then
send their train by digest at once: one round trip each too, and the weights cross to
each node once. Such a train may reach the node before the weights (another connection,
a smaller message); the node waits for them a short while (compute_node.node). A node
that lost them (restarted, or given another job's weights since) answers WeightsMissing:
they are sent once more, and if it has lost them again by the time the task arrives,
that one task carries them inline, which always works. A WeightsMissing to a train sent
before the put_weights was answered means the upload was slow, not lost: the task waits
for that answer and names the weights again.

The node gets the attempt's budget as ShardTask.timeout_s and stops there with
DeadlineExceeded; the connection waits REPLY_MARGIN_S longer, so that declared answer
arrives rather than a bare socket timeout.

Work stealing: each attempt carries a task_id of its own (ShardTask.task_id); `cancel(node,
work)` asks the node to take back the attempt at `work` in flight there, and the attempt's
train then answers TaskCancelled, raised as TaskCancelledError.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from thrift.Thrift import TApplicationException, TException
from thrift.transport.TTransport import TTransportException

from coordinator.executor import (
    ConfigurationError,
    Counters,
    NodeBusyError,
    NodeFailure,
    TaskCancelledError,
    TaskRejected,
)
from idl.gen import ComputeNode
from idl.gen.ttypes import (
    DatasetError,
    DeadlineExceeded,
    EvaluateRequest,
    Evaluation,
    InvalidRequest,
    ModelMissing,
    NodeBusy,
    Prediction,
    PredictRequest,
    ShardMissing,
    ShardTask,
    TaskCancelled,
    TaskResult,
    Tensor,
    Unauthorized,
    WeightsMissing,
)
from idl.rpc import Address, ConnectionPool
from runtime.budget import OutOfTime
from runtime.events import log_event

DECLARED = (NodeBusy, ShardMissing, InvalidRequest, DatasetError, Unauthorized, DeadlineExceeded,
            WeightsMissing, TaskCancelled)
SERVING_DECLARED = (*DECLARED, ModelMissing)
UPLOAD_LOCKS = 64  # (node, model) pairs share these: one upload of a model to a node at a time
REPLY_MARGIN_S = 1.0  # beyond a task's budget: the node's reply (or its DeadlineExceeded) travels


@dataclass
class NodeTask:
    """One shard task as the executor carries it: the wire task plus the shard's bytes.

    With task.weights_digest set and task.weights empty, `weights` are the round's
    weights, sent to each node once (module docstring); otherwise the task carries its own.
    """

    task: ShardTask
    shard_bytes: bytes
    weights: list[Tensor] = field(default_factory=list)

    def by_digest(self) -> bool:
        return bool(self.task.weights_digest) and not self.task.weights


@dataclass(eq=False)
class Upload:
    """One put_weights of some weights to one node, announced once its request was sent."""

    number: int
    digest: str
    answered: threading.Event = field(default_factory=threading.Event)  # or its call failed


class HeldWeights:
    """Which round weights each node holds or is being sent, as far as this coordinator
    knows (thread-safe).

    A node keeps the latest weights it was given, so one upload per node: a WeightsMissing
    answer forgets only the upload the failed task relied on, never a newer one another
    task made meanwhile. While one thread writes a node's put_weights request, others
    wanting the same weights wait for it to be sent (not answered: the node waits for
    weights that a task names before they arrive).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[Address, Upload] = {}
        self._writing: dict[tuple[Address, str], threading.Event] = {}
        self._n_uploads = 0

    def claim(self, address: Address, digest: str, deadline: float) -> Upload | None:
        """None: the caller sends them (then announce() or abandon()); else their upload.

        Waits while another thread writes their request; TimeoutError past `deadline`.
        """
        while True:
            with self._lock:
                upload = self._latest.get(address)
                if upload is not None and upload.digest == digest:
                    return upload
                writing = self._writing.get((address, digest))
                if writing is None:
                    self._writing[(address, digest)] = threading.Event()
                    return None
            if not writing.wait(max(deadline - time.monotonic(), 0.0)):
                raise TimeoutError("waited for another task to send the round's weights")

    def announce(self, address: Address, digest: str) -> Upload:
        """The claimed put_weights request is sent: tasks may name the weights from now on."""
        with self._lock:
            self._n_uploads += 1
            upload = self._latest[address] = Upload(self._n_uploads, digest)
            writing = self._writing.pop((address, digest), None)
        if writing is not None:
            writing.set()
        return upload

    def abandon(self, address: Address, digest: str) -> None:
        """The claimed request could not be sent: the next task to claim them sends them."""
        with self._lock:
            writing = self._writing.pop((address, digest), None)
        if writing is not None:
            writing.set()

    def answered(self, address: Address, upload: Upload, held: bool) -> None:
        """The node answered `upload` (`held`: it took the weights), or its call failed."""
        if not held:
            self.forget(address, upload)
        upload.answered.set()

    def forget(self, address: Address, upload: Upload) -> None:
        """The node said it lacks the weights that `upload` sent."""
        with self._lock:
            if self._latest.get(address) is upload:
                del self._latest[address]


@dataclass
class EvalTask:
    """One shard to score, as the executor carries it: the request and the bytes it may need."""

    request: EvaluateRequest  # one shard; its deadline_s is set per attempt
    shard_bytes: bytes
    model_bytes: bytes


def attempt_task(task: ShardTask, may_decline: bool, timeout_s: float) -> ShardTask:
    """A new request for one attempt at `task`: the small struct copied, the rest shared.

    A shallow copy (every field, whatever the IDL adds): the weights, shard ref and config
    are shared and never written after the round built them; only the attempt's own
    fields are set, on the copy.
    """
    request = copy.copy(task)
    request.may_decline = may_decline
    request.timeout_s = timeout_s
    return request


def untangled(exc: BaseException) -> BaseException:
    """`exc` without its traceback: an answer to pass on, holding no frames.

    Thrift's generated client raises a declared error from a frame that still holds it
    (`raise result.missing`), and a caller that keeps the error keeps its own frame through
    the traceback: reference cycles that hold the frames' locals, this attempt's request and
    result (a whole model each), until the cycle collector happens to run. Measured: the
    first round's ShardMissing kept that round's weights and delta through the next round.
    with_traceback works on thrift's frozen exceptions (it does not go through setattr).
    """
    return exc.with_traceback(None)


def _tensor_bytes(tensors: list[Tensor] | None) -> int:
    return sum(len(t.data or b"") for t in tensors or [])


@lru_cache(maxsize=4096)
def _address(text: str) -> Address:
    return Address.parse(text)


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    """A short reason for a failed call, as it appears in TaskRecord.failures."""
    if isinstance(exc, TTransportException):
        inner = getattr(exc, "inner", None)
        if exc.type == TTransportException.TIMED_OUT or isinstance(inner, TimeoutError):
            return f"timeout after {timeout_s:.3g}s"
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if exc.type == TTransportException.END_OF_FILE or isinstance(inner, ConnectionError):
            return "connection closed"
        return f"transport error: {exc.message or type(inner).__name__}"
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout_s:.3g}s"
    if isinstance(exc, TApplicationException):
        return f"node error: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class NodeCaller:
    """Train tasks and probe nodes over one connection pool (thread-safe)."""

    def __init__(
        self, token: str = "", counters: Counters | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.pool = ConnectionPool(ComputeNode.Client, max_idle=64, tls=tls)
        self._token = token
        self._counters = counters or Counters()
        self._refused: set[Address] = set()  # nodes whose last probe refused our token
        self._upload_locks = [threading.Lock() for _ in range(UPLOAD_LOCKS)]
        self._weights = HeldWeights()
        # task_id of the attempt in flight per (node, id(work)), for cancel()
        self._attempt_ids: dict[tuple[str, int], str] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex()
        self._ids_lock = threading.Lock()

    def __call__(
        self, node: str, work: NodeTask | EvalTask, timeout_s: float, may_decline: bool
    ) -> TaskResult | Evaluation:
        """Train `work` on `node` within `timeout_s`; see the module docstring for errors.

        An EvalTask (the executor runs evaluations as it runs rounds) is scored instead.
        """
        if isinstance(work, EvalTask):
            scored = copy.copy(work.request)  # a retry's copy is its own, as for training
            scored.deadline_s = timeout_s
            return self._serve(node, "evaluate", scored, work.model_bytes, work.shard_bytes,
                               timeout_s)
        address = _address(node)
        deadline = time.monotonic() + timeout_s
        # Each attempt sends its own request: a straggler's backup may be serialising the
        # same task on another thread, so the shared one is never written to.
        request = attempt_task(work.task, may_decline, timeout_s)
        key = (node, id(work))
        with self._ids_lock:
            request.task_id = f"{self._id_prefix}-{next(self._ids)}"
            self._attempt_ids[key] = request.task_id
        try:
            reply = self._train(address, request, work, deadline)
        except (TException, OSError, EOFError) as exc:
            # A socket timeout: REPLY_MARGIN_S past the budget, reported as the budget.
            untangled(exc)
            self.pool.discard(address)
            raise NodeFailure(describe_failure(exc, timeout_s)) from None
        finally:
            with self._ids_lock:
                if self._attempt_ids.get(key) == request.task_id:
                    del self._attempt_ids[key]
        if isinstance(reply, TaskCancelled):
            raise TaskCancelledError(reply.message or "cancelled")
        if isinstance(reply, TaskResult):
            return reply
        if isinstance(reply, ShardMissing):
            raise NodeFailure("lost the shard right after it was uploaded")
        raise declared_failure(reply, node, timeout_s)

    def _train(
        self, address: Address, task: ShardTask, work: NodeTask, deadline: float
    ) -> TaskResult | TException:
        """The node's result, or the declared exception it answered with (connection kept)."""
        with self.pool.connection(address, deadline + REPLY_MARGIN_S - time.monotonic()) as conn:
            try:
                return self._train_call(conn, address, task, work, deadline)
            except ShardMissing as exc:
                untangled(exc)
            except DECLARED as exc:
                return untangled(exc)
            self._counters.add("shard_uploads")
            self._counters.add("bytes_to_nodes", len(work.shard_bytes))
            digest = task.shard.digest
            try:
                conn.set_timeout(deadline + REPLY_MARGIN_S - time.monotonic())
                conn.client.put_shard(digest, work.shard_bytes, task.token or "")
                task.timeout_s = max(deadline - time.monotonic(), 0.001)  # what the upload left
                conn.set_timeout(deadline + REPLY_MARGIN_S - time.monotonic())
                return self._train_call(conn, address, task, work, deadline)
            except DECLARED as exc:
                return untangled(exc)

    def _train_call(
        self, conn: Any, address: Address, task: ShardTask, work: NodeTask, deadline: float
    ) -> TaskResult:
        """train(task) on `conn`, the round's weights sent first unless another task has.

        Raises the node's declared errors (WeightsMissing never: see the module docstring).
        """
        if not work.by_digest():
            self._counters.add("bytes_to_nodes", _tensor_bytes(task.weights))
            return conn.client.train(task)
        digest = task.weights_digest
        losses = 0
        for _ in range(4):  # two losses, and a train that overtook its weights, at most
            if losses == 2:
                break
            upload = self._weights.claim(address, digest, deadline)
            confirmed = True  # a pipelined train reaches the node after its put_weights
            try:
                if upload is None:
                    upload = self._put_weights_then_train(conn, address, task, work.weights)
                    return conn.client.recv_train()
                confirmed = upload.answered.is_set()
                return conn.client.train(task)
            except WeightsMissing as exc:
                untangled(exc)
                if upload is None:
                    raise
                if confirmed:  # the node held them, and has lost them since
                    self._weights.forget(address, upload)
                    losses += 1
                elif not upload.answered.wait(max(deadline - time.monotonic(), 0.0)):
                    # this train overtook a slow upload and the node's wait ran out
                    raise TimeoutError("waited for the node to take the round's weights") from None
            conn.set_timeout(deadline + REPLY_MARGIN_S - time.monotonic())
        # Lost again at once (another job's weights displace them there): inline, this once.
        self._counters.add("weights_inline")
        self._counters.add("bytes_to_nodes", _tensor_bytes(work.weights))
        inline = copy.copy(task)
        inline.weights = work.weights
        return conn.client.train(inline)

    def _put_weights_then_train(
        self, conn: Any, address: Address, task: ShardTask, weights: list[Tensor]
    ) -> Upload:
        """Send put_weights then train, pipelined on one connection: one round trip for both.

        Once put_weights is sent, the round's other tasks for this node send their trains
        by digest (the node waits for weights named before they arrive), so theirs cost
        one round trip too. Returns the upload once the put's answer is in (the train's is
        next on the connection).
        """
        client, digest = conn.client, task.weights_digest
        try:
            client.send_put_weights(digest, weights, task.token or "")
        except BaseException:
            self._weights.abandon(address, digest)
            raise
        upload = self._weights.announce(address, digest)
        held = False
        try:
            client.send_train(task)
            try:
                client.recv_put_weights()
            except DECLARED as exc:
                untangled(exc)
                try:
                    client.recv_train()  # read it, so the connection stays in step
                except DECLARED as late:
                    untangled(late)
                raise exc from None
            held = True
        finally:
            self._weights.answered(address, upload, held)
        self._counters.add("weights_uploads")
        self._counters.add("bytes_to_nodes", _tensor_bytes(weights))
        log_event("weights_uploaded", node=str(address), weights=digest[:12],
                  bytes=_tensor_bytes(weights))
        return upload

    def cancel(self, node: str, work: Any, timeout_s: float) -> bool:
        """Ask `node` to take back the attempt at `work` in flight there, if not started.

        False when no such attempt is in flight (it ended, or `work` is no training task);
        NodeFailure when the node cannot be asked.
        """
        with self._ids_lock:
            task_id = self._attempt_ids.get((node, id(work)))
        if task_id is None:
            return False
        address = _address(node)
        try:
            return bool(self.pool.call(address, timeout_s,
                                       lambda c: c.cancel(task_id, self._token)))
        except Unauthorized as exc:
            raise NodeFailure(f"refused the token: {exc.message}") from None
        except (TException, OSError, EOFError) as exc:
            self.pool.discard(address)
            raise NodeFailure(describe_failure(exc, timeout_s)) from None

    def predict(
        self, node: str, request: PredictRequest, model_bytes: bytes, timeout_s: float
    ) -> Prediction:
        """Label a batch on `node`, uploading the model first if the node lacks it."""
        return self._serve(node, "predict", request, model_bytes, None, timeout_s)

    def _serve(
        self, node: str, method: str, request: Any, model_bytes: bytes,
        shard_bytes: bytes | None, timeout_s: float,
    ) -> Any:
        """`method(request)` on `node`; errors sorted as for training (module docstring)."""
        address = _address(node)
        deadline = time.monotonic() + timeout_s
        try:
            reply = self._serve_call(address, method, request, model_bytes, shard_bytes,
                                     deadline)
        except (TException, OSError, EOFError) as exc:
            untangled(exc)
            self.pool.discard(address)
            raise NodeFailure(describe_failure(exc, timeout_s)) from None
        if isinstance(reply, Prediction | Evaluation):
            return reply
        if isinstance(reply, ModelMissing | ShardMissing):
            raise NodeFailure(f"lost what it was sent right after the upload: {reply.message}")
        raise declared_failure(reply, node, timeout_s)

    def _serve_call(
        self, address: Address, method: str, request: Any, model_bytes: bytes,
        shard_bytes: bytes | None, deadline: float,
    ) -> Any:
        """The node's answer or the declared exception it gave; a missing model or shard is
        uploaded once and the call repeated (connection kept)."""
        sent_model = sent_shard = False
        with self.pool.connection(address, deadline + REPLY_MARGIN_S - time.monotonic()) as conn:
            while True:
                try:
                    return getattr(conn.client, method)(request)
                except ModelMissing as exc:
                    if sent_model:
                        return untangled(exc)
                    untangled(exc)
                    sent_model = True
                    self._put_model(conn, address, request.model, model_bytes)
                except ShardMissing as exc:
                    if sent_shard or shard_bytes is None:
                        return untangled(exc)
                    untangled(exc)
                    sent_shard = True
                    self._counters.add("shard_uploads")
                    conn.client.put_shard(exc.digest or "", shard_bytes, self._token)
                except SERVING_DECLARED as exc:
                    return untangled(exc)
                conn.set_timeout(deadline + REPLY_MARGIN_S - time.monotonic())

    def _put_model(self, conn: Any, address: Address, digest: str, data: bytes) -> None:
        """Upload a model the node lacks, once: concurrent batches wait for one upload."""
        lock = self._upload_locks[hash((address, digest)) % UPLOAD_LOCKS]
        with lock:
            if not conn.client.missing_models([digest], self._token):
                return  # another batch uploaded it meanwhile
            self._counters.add("model_uploads")
            conn.client.put_model(digest, data, self._token)
        log_event("model_uploaded", node=str(address), model=digest[:12], bytes=len(data))

    def probe(self, address: Address, timeout_s: float) -> dict:
        """Ask a node for its load (doubles as the heartbeat); NodeFailure if it cannot."""
        try:
            load = self.pool.call(address, timeout_s, lambda c: c.load(self._token))
        except Unauthorized as exc:
            # It answers, so it is alive; it refuses our token, a configuration error that
            # the first task sent there reports at once (ConfigurationError). Marked dead
            # instead, a round would wait for a node until its deadline and say less.
            if address not in self._refused:
                self._refused.add(address)
                log_event("node_refused_token", level=logging.WARNING, node=str(address),
                          reason=exc.message)
            return {}
        except (TException, OSError, EOFError) as exc:
            self.pool.discard(address)
            raise NodeFailure(describe_failure(exc, timeout_s)) from None
        self._refused.discard(address)
        return {
            "load_probability": load.load_probability or 0.0,
            "recent_service_s": load.recent_service_s or 0.0,
            "tasks_in_flight": load.tasks_in_flight or 0,
        }

    def close(self) -> None:
        self.pool.close()


def declared_failure(reply: TException, node: str, timeout_s: float) -> Exception:
    """What a node's declared answer (busy, refused token, out of time, invalid) means here."""
    if isinstance(reply, NodeBusy):
        return NodeBusyError(reply.message or "busy", reply.retry_after_s or 0.0)
    if isinstance(reply, Unauthorized):
        return ConfigurationError(
            f"node {node} refused the coordinator's token: {reply.message} (give the "
            "coordinator and every node the same --token-file or FEDCLUSTER_TOKEN)"
        )
    if isinstance(reply, DeadlineExceeded):
        return OutOfTime(f"{node}: {reply.message}", reply.budget_s or timeout_s)
    return TaskRejected(reply)
