"""Clip files: 16 kHz mono WAV, written so that a crash leaves either the whole file or none under its name."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import numpy as np

from ..audio import write_wav
from ..errors import StoreError

PARTIAL_SUFFIX = ".partial"


def clip_name(kind: str, time_s: float) -> str:
    """A fresh file name: sorts by time, says what it is, and the random tail makes it unique."""
    return f"{int(time_s * 1000):015d}-{kind}-{secrets.token_hex(4)}.wav"


def clip_file(clip_dir: Path, name: str) -> Path:
    """The path of clip `name`; StoreError for a name that would leave the clip dir."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise StoreError(f"clip name {name!r} is not a plain file name")
    return clip_dir / name


def write_partial(clip_dir: Path, name: str, samples: np.ndarray) -> Path:
    """Write int16 `samples` (n,) for clip `name` to a partial file and fsync it; `publish` renames it.

    The partial's name carries this process's id, so opening the store can tell a crashed writer's
    leftovers from a clip another process is writing right now.

    A write that fails (a full disk) removes its partial file, which would otherwise hold the space until the
    store is next opened, and raises StoreError ("store full: ..." for ENOSPC or EDQUOT)."""
    partial = clip_file(clip_dir, name).with_name(f"{name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        write_wav(partial, samples)
        fsync_path(partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StoreError(f"{'store full: ' if full else ''}clip {name} not written to {clip_dir}:"
                         f" {exc.strerror or exc}") from exc
    return partial


def publish(partial: Path, final: Path) -> None:
    """Rename a partial clip to its final name, durably (the caller then commits the row naming it)."""
    os.replace(partial, final)
    fsync_path(final.parent)


def is_abandoned(name: str) -> bool:
    """True for a partial file whose writing process is gone."""
    try:
        os.kill(int(name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:  # alive, under another user
        pass
    return False


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename or unlink in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
