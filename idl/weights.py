"""A round's weights named by their content, as shards are: the digest both ends compute.

The coordinator computes it once per round and sends the weights to each node once
(ComputeNode.put_weights); every task of the round then names them by digest
(ShardTask.weights_digest). The node recomputes it over what it received, so weights
cached under a digest are exactly the weights that digest names.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from idl.gen.ttypes import Tensor

_LENGTH = struct.Struct("<q")


def weights_digest(tensors: Sequence[Tensor]) -> str:
    """sha256 (hex) over each tensor in order: rank, dimensions and byte count (int64 LE), bytes.

    Shapes are part of it, so the same bytes under other shapes name other weights.
    """
    h = hashlib.sha256()
    for tensor in tensors:
        shape = list(tensor.shape or ())
        data = tensor.data or b""
        h.update(_LENGTH.pack(len(shape)))
        for n in shape:
            h.update(_LENGTH.pack(n))
        h.update(_LENGTH.pack(len(data)))
        h.update(data)
    return h.hexdigest()
