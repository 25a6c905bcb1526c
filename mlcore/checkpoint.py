"""Model files: `.npz` with w1, b1, w2, b2 and a JSON metadata string, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlcore.model import Params

_NAMES = ("w1", "b1", "w2", "b2")


def save_model(path: str | os.PathLike[str], params: Params, meta: dict[str, Any]) -> None:
    """Write params and JSON-serialisable meta to path; a crash never leaves a partial file."""
    write_npz(path, meta, dict(zip(_NAMES, params.tensors(), strict=True)))


def write_npz(
    path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, Any]
) -> None:
    """Arrays and a JSON metadata string as .npz, atomically (fsync, then rename)."""
    target = Path(path)
    meta_json = json.dumps(meta, sort_keys=True)  # TypeError here, before touching the disk
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(meta_json), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path: str | os.PathLike[str]) -> tuple[Params, dict[str, Any]]:
    """Read a file written by save_model; ValueError naming the file if it is not one."""
    name = os.fspath(path)
    try:
        data = np.load(name, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{name}: cannot read model file ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: not a model file (a single .npy array, not an .npz archive)")
    with data:
        missing = [k for k in (*_NAMES, "meta") if k not in data.files]
        if missing:
            raise ValueError(f"{name}: not a model file (missing {', '.join(missing)})")
        try:
            tensors = [data[k] for k in _NAMES]
            meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{name}: cannot read model file ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: metadata is not a JSON object")
    try:
        return Params.from_tensors(tensors), meta
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
