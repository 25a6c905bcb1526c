"""Tensors on the wire: shape + little-endian float64 bytes in C order.

Binary fields cost a fifth of list<double> for the default model; decoding is a
zero-copy view over the received bytes, so only the final copy to a writable
array is paid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from idl.gen.ttypes import Tensor

WIRE_DTYPE = np.dtype("<f8")


class TensorError(ValueError):
    """A tensor whose shape and byte count disagree, or whose values are not finite."""


def encode_tensor(array: np.ndarray) -> Tensor:
    """Pack an array as a Tensor (copies only if it is not little-endian C-contiguous float64)."""
    packed = np.ascontiguousarray(array, dtype=WIRE_DTYPE)
    return Tensor(shape=[int(n) for n in packed.shape], data=packed.tobytes())


def decode_tensor(tensor: Tensor, *, name: str = "tensor") -> np.ndarray:
    """Unpack a Tensor into a writable native float64 array; TensorError if malformed."""
    shape = tuple(tensor.shape or ())
    if any(n < 0 for n in shape):
        raise TensorError(f"{name}: negative dimension in shape {list(shape)}")
    n_values = int(np.prod(shape, dtype=np.int64))
    data = tensor.data or b""
    if len(data) != n_values * WIRE_DTYPE.itemsize:
        raise TensorError(
            f"{name}: shape {list(shape)} needs {n_values * WIRE_DTYPE.itemsize} bytes, "
            f"got {len(data)}"
        )
    array = np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float64).reshape(shape)
    if not np.all(np.isfinite(array)):
        raise TensorError(f"{name}: holds NaN or infinite values")
    return array


def encode_tensors(arrays: Sequence[np.ndarray]) -> list[Tensor]:
    return [encode_tensor(a) for a in arrays]


def decode_tensors(tensors: Sequence[Tensor] | None, *, name: str = "weights") -> list[np.ndarray]:
    return [decode_tensor(t, name=f"{name}[{i}]") for i, t in enumerate(tensors or [])]
