"""Crash-safe file replacement: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from .errors import CheckpointExistsError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write_path(filepath: os.PathLike | str, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it replaces ``filepath``.

    A crash or an exception at any point leaves the previous file untouched and removes the
    temporary file. With ``overwrite=False`` an existing target raises
    :class:`CheckpointExistsError` (a ``FileExistsError``), checked again at the final step.
    """
    target = os.path.abspath(os.fspath(filepath))
    if not overwrite and os.path.lexists(target):
        raise CheckpointExistsError("already exists and overwrite=False", filepath=filepath)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory does not exist: '{directory}'")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        mode = (os.stat(target).st_mode & 0o777) if os.path.exists(target) else (0o666 & ~_UMASK)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if another writer got there first
            except FileExistsError:
                raise CheckpointExistsError("already exists and overwrite=False", filepath=filepath) from None
            os.unlink(tmp)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
