"""Tensors on the wire: shape + little-endian float64 bytes in C order.

Binary fields cost a fifth of list<double> for the default model. Decoding is a view over
the received bytes (idl.protocol hands bulk binaries over as views of the received frame), so a
caller that only reads the weights pays no copy at all, and one that needs a writable array
pays exactly one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from idl.gen.ttypes import Tensor

WIRE_DTYPE = np.dtype("<f8")
# numpy's own limit is 64 dimensions; no tensor of this project has more than 2.
MAX_DIMS = 32


class TensorError(ValueError):
    """A tensor whose shape and byte count disagree, or whose values are not finite."""


def encode_tensor(array: np.ndarray) -> Tensor:
    """Pack an array as a Tensor (copies only if it is not little-endian C-contiguous float64)."""
    packed = np.ascontiguousarray(array, dtype=WIRE_DTYPE)
    return Tensor(shape=[int(n) for n in packed.shape], data=packed.tobytes())


def decode_tensor(tensor: Tensor, *, name: str = "tensor", writable: bool = True) -> np.ndarray:
    """Unpack a Tensor into a native float64 array; TensorError if malformed.

    writable=False returns a read-only view of the tensor's bytes when they are already
    native float64 (no copy; the array keeps the bytes alive).
    """
    shape = tuple(tensor.shape or ())
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{name}: {len(shape)} dimensions, at most {MAX_DIMS} allowed")
    if any(n < 0 for n in shape):
        raise TensorError(f"{name}: negative dimension in shape {list(shape)}")
    # Python integers: an int64 product wraps around (2**32 x 2**32 "needs" 0 bytes).
    n_bytes = math.prod(shape) * WIRE_DTYPE.itemsize
    data = tensor.data or b""
    if len(data) != n_bytes:
        raise TensorError(f"{name}: shape {list(shape)} needs {n_bytes} bytes, got {len(data)}")
    try:
        array = np.frombuffer(data, dtype=WIRE_DTYPE).reshape(shape)
    except ValueError as exc:  # e.g. (0, 2**63 - 1): empty, yet too big for numpy
        raise TensorError(f"{name}: shape {list(shape)}: {exc}") from None
    if writable or not array.dtype.isnative:
        array = array.astype(np.float64)
    if not all_finite(array):
        raise TensorError(f"{name}: holds NaN or infinite values")
    return array


def all_finite(array: np.ndarray) -> bool:
    """True when no value is NaN or infinite, without a boolean temporary as large as `array`.

    Any NaN or infinity makes the sum NaN or infinite, so a finite sum proves every value
    finite in one read-only pass; only a non-finite sum (a bad value, or finite values that
    overflow when added) needs the exact elementwise check.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(array)
    return bool(np.isfinite(total)) or bool(np.isfinite(array).all())


def encode_tensors(arrays: Sequence[np.ndarray]) -> list[Tensor]:
    return [encode_tensor(a) for a in arrays]


def decode_tensors(
    tensors: Sequence[Tensor] | None, *, name: str = "weights", writable: bool = True
) -> list[np.ndarray]:
    return [
        decode_tensor(t, name=f"{name}[{i}]", writable=writable)
        for i, t in enumerate(tensors or [])
    ]
