"""A trained model as the cluster serves it: one MLP or an ensemble of them, the input
standardisation they were trained with, and the names of their classes.

Everything a prediction needs travels in the model file, so a node given the file's bytes
needs nothing else. An ensemble averages its members' class probabilities, summed in
member order, so its answers are the same bits wherever they are computed. Rows are
independent: a row's answer does not depend on the rows batched with it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlcore import model
from mlcore.checkpoint import write_npz
from mlcore.model import Params
from mlcore.standardize import Standardization

_NAMES = ("w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class Scores:
    """A model on labelled rows: exact counts, so scores of shards add up."""

    n_rows: int
    n_errors: int
    summed_loss: float  # cross-entropy summed over the rows
    confusion: np.ndarray  # (k, k) int64: [true class, predicted class]

    @property
    def error(self) -> float:
        return self.n_errors / self.n_rows if self.n_rows else 0.0

    @property
    def mean_loss(self) -> float:
        return self.summed_loss / self.n_rows if self.n_rows else 0.0


@dataclass(frozen=True)
class Servable:
    """One MLP (one member) or an ensemble, ready to label raw rows."""

    members: tuple[Params, ...]
    standardization: Standardization | None = None
    class_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a model needs at least one member")
        d, k = self.members[0].d, self.members[0].k
        for i, member in enumerate(self.members):
            if (member.d, member.k) != (d, k):
                raise ValueError(
                    f"member {i} maps {member.d} -> {member.k}, member 0 maps {d} -> {k}"
                )
        if self.standardization is not None and self.standardization.n_features != d:
            raise ValueError(
                f"standardisation has {self.standardization.n_features} features, "
                f"the model {d}"
            )
        if self.class_names and len(self.class_names) != k:
            raise ValueError(f"{len(self.class_names)} class names for {k} classes")

    @property
    def n_features(self) -> int:
        return self.members[0].d

    @property
    def n_classes(self) -> int:
        return self.members[0].k

    def names(self) -> tuple[str, ...]:
        """Class names; "0".."k-1" when the file gives none."""
        return self.class_names or tuple(str(i) for i in range(self.n_classes))

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows as the members take them: float64, C order, standardised if trained so."""
        x = np.ascontiguousarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"rows must be (n, {self.n_features}), got shape {list(np.shape(rows))}"
            )
        if not np.isfinite(x).all():
            raise ValueError("rows hold NaN or infinite values")
        return self.standardization.apply(x) if self.standardization is not None else x

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """(n, k) class probabilities: a member's softmax, or the members' mean."""
        x = self.inputs(rows)
        total = model.predict_proba(self.members[0], x)
        for member in self.members[1:]:
            total += model.predict_proba(member, x)
        if len(self.members) > 1:
            total /= len(self.members)
        return total

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Most probable class per row (int64; ties: the lowest class)."""
        if len(self.members) == 1:
            return model.predict(self.members[0], self.inputs(rows))
        return np.argmax(self.predict_proba(rows), axis=1).astype(np.int64)

    def score(self, rows: np.ndarray, labels: np.ndarray) -> Scores:
        """Errors, summed cross-entropy and confusion on labelled rows."""
        y = np.asarray(labels, dtype=np.int64)
        k = self.n_classes
        if y.shape != (len(rows),) or (len(y) and (y.min() < 0 or y.max() >= k)):
            raise ValueError(f"labels must be one per row, in 0..{k - 1}")
        predicted = self.predict(rows)
        if len(self.members) == 1:
            summed = model.summed_loss(self.members[0], self.inputs(rows), y) if len(y) else 0.0
        else:
            proba = self.predict_proba(rows)
            picked = proba[np.arange(len(y)), y]
            summed = float(-np.sum(np.log(np.maximum(picked, np.finfo(np.float64).tiny))))
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (y, predicted), 1)
        return Scores(len(y), int(np.count_nonzero(predicted != y)), float(summed), confusion)


def shard_models(params: Params, deltas: Sequence[Params]) -> tuple[Params, ...]:
    """Each shard's model of a round: `params + delta`, tensor by tensor, in shard order.

    The members of the round's ensemble (the weak learners FedAvg averages into one model).
    """
    members = []
    for i, delta in enumerate(deltas):
        if [t.shape for t in delta.tensors()] != [t.shape for t in params.tensors()]:
            raise ValueError(f"delta {i} does not have the model's shapes")
        members.append(Params.from_tensors(
            [base + step for base, step in zip(params.tensors(), delta.tensors(), strict=True)]
        ))
    return tuple(members)


def save_servable(path: str | os.PathLike[str], servable: Servable) -> None:
    """Write the model file (atomically: a crash never leaves a partial file)."""
    meta = dict(servable.meta)
    meta["members"] = len(servable.members)
    meta["class_names"] = list(servable.class_names)
    meta["standardization"] = (
        servable.standardization.to_meta() if servable.standardization is not None else None
    )
    arrays: dict[str, Any] = {}
    for i, member in enumerate(servable.members):
        prefix = "" if len(servable.members) == 1 else f"m{i}_"
        arrays.update({prefix + n: t for n, t in zip(_NAMES, member.tensors(), strict=True)})
    write_npz(path, meta, arrays)


def load_servable(source: bytes | str | os.PathLike[str], name: str = "") -> Servable:
    """Read a model file (its bytes or its path); ValueError naming `name` if it is not one.

    Also reads the files `client --model-out` wrote before ensembles existed (one member,
    no class names).
    """
    label = name or (os.fspath(source) if not isinstance(source, bytes) else "model")
    try:
        data = np.load(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source),
                       allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{label}: cannot read model file ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{label}: not a model file (a single .npy array, not an .npz archive)")
    try:
        with data:
            meta = _meta(data, label)
            members = _members(data, int(meta.get("members", 1)), label)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{label}: cannot read model file ({exc})") from None
    try:
        stats = meta.get("standardization")
        return Servable(
            members=members,
            standardization=Standardization.from_meta(stats) if stats else None,
            class_names=tuple(str(c) for c in meta.get("class_names") or ()),
            meta=meta,
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{label}: {exc}") from None


def _meta(data: Any, label: str) -> dict[str, Any]:
    if "meta" not in data.files:
        raise ValueError(f"{label}: not a model file (no metadata)")
    try:
        meta = json.loads(str(data["meta"]))
    except ValueError as exc:
        raise ValueError(f"{label}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{label}: metadata is not a JSON object")
    members = meta.get("members", 1)
    if not isinstance(members, int) or not 1 <= members <= 4096:
        raise ValueError(f"{label}: members must be an integer in 1..4096, got {members!r}")
    return meta


def _members(data: Any, count: int, label: str) -> tuple[Params, ...]:
    prefixes: Sequence[str] = [""] if count == 1 else [f"m{i}_" for i in range(count)]
    members = []
    for prefix in prefixes:
        names = [prefix + n for n in _NAMES]
        missing = [n for n in names if n not in data.files]
        if missing:
            raise ValueError(f"{label}: not a model file (missing {', '.join(missing)})")
        try:
            params = Params.from_tensors([data[n] for n in names])
        except ValueError as exc:
            raise ValueError(f"{label}: {prefix or 'weights '}{exc}") from None
        if not all(np.isfinite(t).all() for t in params.tensors()):
            raise ValueError(f"{label}: {prefix or 'weights '}hold NaN or infinite values")
        members.append(params)
    return tuple(members)
