"""What one predict or evaluate request may ask of a server: rows that fit the model, and
work within a bound.

Coordinator and node check the same way, with the same messages: the coordinator before a
request joins a batch (one bad request must not fail the others riding with it), the node
again on what it is given. Work is rows x parameters summed over the model's members (an
ensemble of m equal members: rows x parameters x m), the multiply-adds of a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from idl.gen.ttypes import Tensor
from idl.tensors import WIRE_DTYPE, all_finite

# About 2e11 flops: some 5 s of one core at the kernels' ~40 GFLOP/s; a 1,000-row request
# to a 10M-parameter model is 1e10, a 256-row batch to the default letters model 3e5.
DEFAULT_MAX_PREDICT_WORK = 10**11


class ServingRequestError(ValueError):
    """Rows that do not fit the model, or a request over the work bound: the caller's fault."""


def model_parameters(dims: Sequence[tuple[int, int, int]]) -> int:
    """Parameters of all members, d*h + h + h*k + k each, from their (d, h, k)."""
    return sum(d * h + h + h * k + k for d, h, k in dims)


def check_rows(tensor: Tensor | None, n_features: int, name: str = "rows") -> np.ndarray:
    """The request's rows as a read-only (n, d) float64 view; ServingRequestError naming the
    first bad row, or the shape that does not fit, otherwise."""
    if tensor is None:
        raise ServingRequestError(f"{name}: a tensor of shape (n, {n_features}) is required")
    shape = [int(n) for n in tensor.shape or ()]
    if len(shape) != 2 or shape[0] < 0:
        raise ServingRequestError(
            f"{name} must have shape (n, {n_features}), got {shape}"
        )
    if shape[1] != n_features:
        raise ServingRequestError(
            f"{name} have {shape[1]} values each, the model takes {n_features} "
            f"(shape {shape})"
        )
    data = tensor.data or b""
    n_bytes = math.prod(shape) * WIRE_DTYPE.itemsize
    if len(data) != n_bytes:
        raise ServingRequestError(f"{name}: shape {shape} needs {n_bytes} bytes, got {len(data)}")
    rows = np.frombuffer(data, dtype=WIRE_DTYPE).reshape(shape)
    if not all_finite(rows):
        bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise ServingRequestError(
            f"{name}[{bad}] (row {bad + 1}) holds NaN or an infinite value; "
            "every value must be a finite number"
        )
    return rows


def check_work(n_rows: int, n_parameters: int, max_work: int, server: str) -> None:
    """ServingRequestError naming the bound when rows x parameters exceeds `max_work`."""
    work = n_rows * n_parameters
    if work > max_work:
        raise ServingRequestError(
            f"request too large for {server}: rows x parameters (all members) = "
            f"{n_rows:,} x {n_parameters:,} = {work:,} exceeds the bound of {max_work:,} "
            "(--max-predict-work); send fewer rows per request"
        )


def check_deadline(deadline_s: float | None, default_s: float) -> float:
    """The request's deadline in seconds (the IDL's default when unset); finite and > 0."""
    value = default_s if deadline_s is None else deadline_s
    if not (0 < value <= 86400):
        raise ServingRequestError(f"deadline_s must be in (0, 86400] seconds, got {value}")
    return float(value)
