"""Checkpoint writing that never loses a checkpoint silently and never leaves half a file.

Lightning's default writer serialises into memory, writes a temporary file in ``$TMPDIR`` and moves
it into place; across filesystems the move is a copy that truncates the previous ``last.ckpt`` first,
so a full disk leaves a broken file where a good one was. It also swallows ``PermissionError``, so a
run into an unwritable folder ends "successfully" with no checkpoint at all.

Here a checkpoint is written beside its final name, flushed and fsynced, then renamed over it
(``os.replace`` is atomic within a filesystem): at every instant the final name holds either the old
or the new complete file. Any failure removes the temporary file and raises, naming the path and
what to do.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "save_atomic", "check_writable", "write_hint"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and the fix."""


def write_hint(path: str | os.PathLike, err: OSError | None = None) -> str:
    """What to do when ``path`` cannot be written (the overrides that move train.py's outputs)."""
    folder = Path(path).parent
    if err is not None and err.errno in _NO_SPACE:
        first = f"free space on the filesystem of {folder}"
    else:
        first = f"make {folder} writable"
    return (f"{first}, or write the run elsewhere with paths.output_dir=<dir> "
            f"(checkpoints only: callbacks.model_checkpoint.dirpath=<dir> and callbacks.model_checkpoint_steps.dirpath=<dir>).")


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk; some filesystems refuse a
    # directory fsync (EINVAL), which is then as durable as they get.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save's stream writer reports a full disk as a RuntimeError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a complete new file or the old one, never half.

    Raises:
        CheckpointWriteError: the folder cannot be created or written, or the disk is full; any
            previous file at ``path`` is unchanged and no temporary file is left.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        os_err = _os_error(e)
        if os_err is None or isinstance(e, CheckpointWriteError):
            raise
        kept = " The previous file there is unchanged." if path.is_file() else ""
        raise CheckpointWriteError(os_err.errno, f"Could not write checkpoint {path}: {os_err.strerror or os_err}."
                                   f"{kept} To fix: {write_hint(path, os_err)}") from e
    _fsync_dir(path.parent)
    return path


def check_writable(folder: str | os.PathLike) -> str | None:
    """None if files can be created in ``folder`` (made if missing), else the reason and the fix."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return (f"Checkpoints cannot be written to {folder}: {e.strerror or e}. "
                f"To fix: {write_hint(folder / 'x', e)}")
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that saves with :func:`save_atomic` (errors raise, never swallowed).

    Remote paths (``s3://`` and other fsspec URLs) keep Lightning's writer: object stores replace
    a key atomically by themselves.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomic(checkpoint, path)
