"""Durable file replacement for the learning state (FedAdam state, verifier, validation cache, model
versions): write a sibling temporary file, fsync it, rename it over the target, fsync the directory.
A crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..store.clips import fsync_path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably. A write that fails (a full disk) removes its temporary
    file, so that it does not hold the space, and raises the OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez (no pickle: every array must be numeric, bool or fixed-width str) written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())
