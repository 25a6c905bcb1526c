"""Checks on a RoundRequest before any node sees it: each failure names the field at fault.

The coordinator does no model math, but it can see that tensors are well-formed and that
their shapes chain as W1 (d,h), b1 (h), W2 (h,k), b2 (k), so a bad request fails at once
with a precise message instead of on every node.
"""

from __future__ import annotations

import ipaddress
import math
import re

from coordinator.policies import policy_name
from idl.gen.constants import DEFAULT_MAX_TASK_WORK
from idl.gen.ttypes import RoundRequest, Tensor
from idl.rpc import Address
from mlcore.shapes import mlp_dims
from runtime.shard_store import ShardError, check_digest

MAX_SHARDS = 100_000
DEFAULT_DEADLINE_S = 3600.0
# A DNS name (labels of letters, digits, '-' and, as Compose service names have them, '_').
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class RequestError(ValueError):
    """The request is malformed; the message names the field."""


def _tensor_shape(tensor: Tensor, name: str) -> tuple[int, ...]:
    if tensor is None or tensor.shape is None:
        raise RequestError(f"{name}: missing shape")
    shape = tuple(tensor.shape)
    if any(n < 0 for n in shape):
        raise RequestError(f"{name}: negative dimension in shape {list(shape)}")
    expected = 8 * math.prod(shape)
    got = len(tensor.data or b"")
    if got != expected:
        raise RequestError(f"{name}: shape {list(shape)} needs {expected} bytes, got {got}")
    return shape


def check_weights(weights: list[Tensor] | None) -> None:
    """Four well-formed tensors whose shapes chain: (d,h), (h,), (h,k), (k,)."""
    if not weights or len(weights) != 4:
        n = len(weights or [])
        raise RequestError(f"weights: expected 4 tensors [w1, b1, w2, b2], got {n}")
    shapes = [_tensor_shape(t, f"weights[{i}]") for i, t in enumerate(weights)]
    try:
        mlp_dims(shapes)
    except ValueError as exc:
        raise RequestError(f"weights: {exc}") from None


def check_node_address(host: str, port: int) -> Address:
    """A registering node's address: an IP literal or a DNS name, and a port in 1..65535."""
    if not 0 < port < 65536:
        raise RequestError(f"register_node: port must be in 1..65535, got {port}")
    try:
        ipaddress.ip_address(host)
        return Address(host, port)
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        shown = host if len(host) <= 80 else host[:80] + "..."
        raise RequestError(
            f"register_node: host must be an IP address or a DNS name, got {shown!r}"
        )
    return Address(host, port)


def check_work(request: RoundRequest, max_work: int) -> None:
    """Each shard task's epochs x rows x parameters within `max_work` (the nodes' default).

    Rows are the client's ShardRef.n_rows, a claim: the nodes check the real count again.
    """
    w1, _, w2, _ = (tuple(t.shape) for t in request.weights)
    (d, h), k = w1, w2[1]
    n_params = d * h + h + h * k + k
    epochs = request.config.epochs
    for i, shard in enumerate(request.shards):
        work = epochs * max(shard.n_rows or 0, 0) * n_params
        if work > max_work:
            raise RequestError(
                f"shards[{i}] ({shard.name}): epochs x rows x parameters = {epochs:,} x "
                f"{shard.n_rows:,} x {n_params:,} = {work:,} exceeds the bound of "
                f"{max_work:,} per task (--max-task-work); use fewer epochs, smaller shards "
                "or a smaller model"
            )


def check_request(
    request: RoundRequest, max_task_work: int = DEFAULT_MAX_TASK_WORK
) -> tuple[float, str]:
    """RequestError unless the request is runnable; returns (deadline_s, policy name or "")."""
    if request.round is None or request.round < 0:
        raise RequestError(f"round: must be >= 0, got {request.round}")
    check_weights(request.weights)
    if not request.shards:
        raise RequestError("shards: at least one shard is required")
    if len(request.shards) > MAX_SHARDS:
        raise RequestError(f"shards: at most {MAX_SHARDS} per round, got {len(request.shards)}")
    for i, shard in enumerate(request.shards):
        if shard is None:
            raise RequestError(f"shards[{i}]: missing")
        try:
            check_digest(shard.digest)
        except ShardError as exc:
            raise RequestError(f"shards[{i}] ({shard.name}): {exc}") from None
    config = request.config
    if config is None:
        raise RequestError("config: a TrainConfig is required")
    if config.epochs is None or config.epochs < 1:
        raise RequestError(f"config.epochs: must be >= 1, got {config.epochs}")
    if config.eta is None or not math.isfinite(config.eta) or config.eta <= 0:
        raise RequestError(f"config.eta: must be > 0 and finite, got {config.eta}")
    if config.batch_size is not None and config.batch_size < 0:
        raise RequestError(f"config.batch_size: must be >= 0, got {config.batch_size}")
    if config.momentum is not None and not 0 <= config.momentum < 1:
        raise RequestError(f"config.momentum: must be in [0, 1), got {config.momentum}")
    check_work(request, max_task_work)
    deadline_s = request.deadline_s
    if deadline_s is None or deadline_s == 0:
        deadline_s = DEFAULT_DEADLINE_S
    if not math.isfinite(deadline_s) or deadline_s < 0:
        raise RequestError(f"deadline_s: must be > 0 and finite, got {request.deadline_s}")
    policy = ""
    if request.policy:
        try:
            policy = policy_name(request.policy)
        except ValueError as exc:
            raise RequestError(f"policy: {exc}") from None
    return deadline_s, policy
