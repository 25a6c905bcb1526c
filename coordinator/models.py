"""Models the coordinator holds: the client's files by sha256, checked and described once.

The coordinator never predicts: it reads a file with mlcore.servable.load_servable only to
refuse what is not a model and to learn its layout (features, classes, members,
parameters), the same reader the nodes use, so the two never disagree about a file. It
keeps the bytes to forward, in the store shards use, bounded by --max-model-cache-mb.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mlcore.servable import load_servable
from runtime.serving_limits import model_parameters
from runtime.shard_store import ShardStore, sha256_hex


class ModelFileError(ValueError):
    """Bytes sent as a model that are not a model file (the message says what is wrong)."""


class MissingModel(LookupError):
    """The coordinator holds no model with this digest: put_model it, then call again."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"model {digest or '(empty digest)'} is not held by this coordinator: "
            "send it with put_model and retry"
        )
        self.digest = digest


@dataclass(frozen=True)
class HeldModel:
    """A model file's bytes and what serving needs to know about it without its maths."""

    data: bytes
    n_features: int
    n_classes: int
    members: int
    class_names: tuple[str, ...]
    n_parameters: int  # all members together


def describe_model(data: bytes, label: str) -> HeldModel:
    """Check `data` is a model file and describe it; ModelFileError otherwise."""
    try:
        servable = load_servable(bytes(data), label)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return HeldModel(
        data=bytes(data),
        n_features=servable.n_features,
        n_classes=servable.n_classes,
        members=len(servable.members),
        class_names=servable.names(),
        n_parameters=model_parameters([(m.d, m.h, m.k) for m in servable.members]),
    )


class ModelShelf:
    """Thread-safe digest -> HeldModel, LRU-bounded in bytes, with the names clients gave."""

    def __init__(self, max_bytes: int) -> None:
        self.store: ShardStore[HeldModel] = ShardStore(
            max_bytes, decode=describe_model, size=lambda m: len(m.data),
            refuse_oversize=True, owner="the coordinator", kind="model",
        )
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes, name: str) -> tuple[str, HeldModel]:
        """Check and keep a model file; its digest and description (ModelFileError, ShardError)."""
        digest = sha256_hex(data)
        held = self.store.put(digest, data)
        with self._lock:
            self._names[digest] = name
            if len(self._names) > 2 * len(self.store) + 16:  # forget names of evicted models
                kept = {d for d, _ in self.store.items()}
                self._names = {d: n for d, n in self._names.items() if d in kept}
        return digest, held

    def get(self, digest: str) -> HeldModel:
        held = self.store.get(digest or "")
        if held is None:
            raise MissingModel(digest)
        return held

    def missing(self, digests: list[str]) -> list[str]:
        return self.store.missing(digests)

    def listing(self) -> list[tuple[str, str, HeldModel]]:
        """(digest, name, model) of every held model, most recently used last."""
        with self._lock:
            names = dict(self._names)
        return [(d, names.get(d, ""), m) for d, m in self.store.items()]
