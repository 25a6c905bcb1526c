"""What a node does with models, free of Thrift: keep them parsed by digest, label rows,
score shards.

Models arrive once by digest (put_model; the coordinator sends one when the node answers
ModelMissing) and stay parsed in a bounded LRU store, the one shards use. A prediction
runs on the connection's own thread, outside the training slots: it is short and bounded
(--max-predict-work), and training should not hold it up. Labels and probabilities are
exactly what mlcore.servable.Servable gives in-process: rows are independent in the
kernels, so a row's answer does not depend on the batch it came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compute_node.node import MissingShard
from compute_node.shards import Shard
from compute_node.trainer import check_shard_fits
from mlcore.servable import Scores, Servable, load_servable
from runtime.events import log_event
from runtime.serving_limits import (
    DEFAULT_MAX_PREDICT_WORK,
    check_work,
    model_parameters,
)
from runtime.shard_store import DEFAULT_MAX_BYTES, ShardStore, check_digest


class ModelError(ValueError):
    """Bytes sent as a model file that are not one (the caller must send a model file)."""


class MissingModel(LookupError):
    """The node holds no model with this digest; the caller should put_model it."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"model {digest} is not on this node; send it with put_model and retry")
        self.digest = digest


@dataclass(frozen=True)
class Labelled:
    """A batch's answer: one class per row, and the (n, k) probabilities when asked for."""

    labels: np.ndarray
    probabilities: np.ndarray | None


def parse_model(data: bytes, name: str) -> Servable:
    """A model file's bytes as a Servable; ModelError saying what is wrong otherwise."""
    try:
        return load_servable(data, name)
    except ValueError as exc:
        raise ModelError(str(exc)) from None


def servable_bytes(servable: Servable) -> int:
    """What a parsed model counts against the cache: its weights' bytes."""
    return sum(t.nbytes for member in servable.members for t in member.tensors())


def n_parameters(servable: Servable) -> int:
    return model_parameters([(m.d, m.h, m.k) for m in servable.members])


def model_store(max_bytes: int = DEFAULT_MAX_BYTES) -> ShardStore[Servable]:
    """Parsed models by digest, LRU-bounded in bytes (the newest kept even alone over it)."""
    return ShardStore(max_bytes, decode=parse_model, size=servable_bytes,
                      owner="this node", kind="model")


class NodeServing:
    """Thread-safe: predictions and evaluations from the connection threads."""

    def __init__(
        self,
        models: ShardStore[Servable],
        shards: ShardStore[Shard],
        max_work: int = DEFAULT_MAX_PREDICT_WORK,
    ) -> None:
        self.models = models
        self.shards = shards
        self.max_work = max_work

    def put_model(self, digest: str, data: bytes) -> None:
        """Keep a model file whose bytes hash to `digest` (ShardError) and parse (ModelError)."""
        servable = self.models.put(digest, data)
        log_event("model_stored", digest=digest[:12], members=len(servable.members),
                  bytes=len(data))

    def model(self, digest: str) -> Servable:
        check_digest(digest)
        servable = self.models.get(digest)
        if servable is None:
            raise MissingModel(digest)
        return servable

    def predict(self, servable: Servable, rows: np.ndarray, probabilities: bool) -> Labelled:
        """Label checked rows (n, d) as Servable does in-process, bit for bit."""
        check_work(len(rows), n_parameters(servable), self.max_work, "this node")
        if not len(rows):
            return Labelled(np.empty(0, dtype=np.int64),
                            np.empty((0, servable.n_classes)) if probabilities else None)
        if not probabilities:
            return Labelled(servable.predict(rows), None)
        proba = servable.predict_proba(rows)
        if len(servable.members) > 1:  # what Servable.predict does for an ensemble
            return Labelled(np.argmax(proba, axis=1).astype(np.int64), proba)
        return Labelled(servable.predict(rows), proba)

    def evaluate(self, servable: Servable, shards: Sequence[tuple[str, str]]) -> Scores:
        """Scores of the model on (name, digest) shards, summed in the order given."""
        k = servable.n_classes
        n_rows = n_errors = 0
        summed = 0.0
        confusion = np.zeros((k, k), dtype=np.int64)
        for name, digest in shards:
            check_digest(digest)
            shard = self.shards.get(digest)
            if shard is None:
                raise MissingShard(digest)
            label = name or f"shard {digest[:12]}"
            _check_fit(servable, shard, label)
            check_work(shard.n_rows, n_parameters(servable), self.max_work, "this node")
            if not shard.n_rows:
                continue
            scores = servable.score(shard.x, shard.y)
            n_rows += scores.n_rows
            n_errors += scores.n_errors
            summed += scores.summed_loss
            confusion += scores.confusion
        return Scores(n_rows, n_errors, summed, confusion)


def _check_fit(servable: Servable, shard: Shard, label: str) -> None:
    """ShardMismatch (a dataset error) when the shard's width or labels do not fit the model."""
    check_shard_fits(shard, servable.n_features, servable.n_classes, label)
