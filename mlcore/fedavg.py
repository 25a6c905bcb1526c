"""Federated averaging: the pure aggregation step, apart from all networking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlcore.model import Params


def fedavg(params: Params, updates: Sequence[tuple[Params, int]]) -> Params:
    """Return params + sum(n_i * delta_i) / sum(n_i), summed in the order given.

    Each update is (delta, n_samples) with delta = trained - params. The fixed order keeps
    the result bitwise identical whatever order the updates arrived in over the network.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    shapes = [t.shape for t in params.tensors()]
    total = 0
    for index, (delta, n) in enumerate(updates):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"update {index}: sample count must be an integer >= 1, got {n!r}")
        got = [t.shape for t in delta.tensors()]
        if got != shapes:
            raise ValueError(f"update {index}: delta shapes {got} differ from the model's {shapes}")
        total += int(n)
    out = []
    for i, base in enumerate(params.tensors()):
        acc = np.zeros(base.shape, dtype=np.float64)
        for delta, n in updates:
            acc += float(n) * np.asarray(delta.tensors()[i], dtype=np.float64)
        new = base + acc / float(total)
        # One check of the output covers every input: a NaN or infinity anywhere (or a sum
        # that overflows) leaves a non-finite value here. Only then look for the culprit.
        if not np.isfinite(new).all():
            raise ValueError(_non_finite(params, updates, i))
        out.append(new)
    return Params.from_tensors(out)


def _non_finite(params: Params, updates: Sequence[tuple[Params, int]], i: int) -> str:
    """Say which input made tensor i of the average non-finite."""
    if not np.isfinite(params.tensors()[i]).all():
        return f"the weights' tensor {i} holds NaN or infinite values"
    for index, (delta, _) in enumerate(updates):
        if not np.isfinite(delta.tensors()[i]).all():
            return f"update {index}: delta tensor {i} holds NaN or infinite values"
    return f"the average of tensor {i} overflows (deltas too large)"
