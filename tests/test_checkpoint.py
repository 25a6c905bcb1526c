"""Model files round-trip bit for bit, are replaced atomically, and bad files give clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mlcore import checkpoint
from mlcore.checkpoint import load_model, save_model
from mlcore.model import init_params


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    params = init_params(16, 24, 26, seed=5)
    meta = {"round": 3, "seed": 5, "eta": 1e-4, "shards": ["train_1", "train_2"]}
    path = tmp_path / "model.npz"
    save_model(path, params, meta)
    loaded, loaded_meta = load_model(path)
    assert loaded_meta == meta
    for a, b in zip(params.tensors(), loaded.tensors(), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_checkpoint_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = init_params(2, 3, 4, seed=1)
    save_model(path, old, {"round": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, init_params(2, 3, 4, seed=2), {"round": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]
    loaded, meta = load_model(path)
    assert meta == {"round": 1}
    assert loaded.w1.tobytes() == old.w1.tobytes()


def test_checkpoint_rejects_unserialisable_meta_before_writing(tmp_path):
    path = tmp_path / "model.npz"
    with pytest.raises(TypeError):
        save_model(path, init_params(2, 3, 4, seed=1), {"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"PK\x03\x04broken zip"])
def test_load_model_rejects_unreadable_files(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.npz"):
        load_model(path)


def test_load_model_rejects_missing_file_and_wrong_archives(tmp_path):
    with pytest.raises(ValueError, match="nothere.npz"):
        load_model(tmp_path / "nothere.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="missing w1"):
        load_model(tmp_path / "other.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a model file"):
        load_model(tmp_path / "single.npy")
    p = init_params(2, 3, 4, seed=1)
    np.savez(tmp_path / "shapes.npz", w1=p.w1, b1=p.b1[:2], w2=p.w2, b2=p.b2, meta=np.array("{}"))
    with pytest.raises(ValueError, match="shapes.npz: tensor shapes disagree"):
        load_model(tmp_path / "shapes.npz")
