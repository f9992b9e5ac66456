"""Crash-safe file replacement: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from typing import Iterator

from torchkeras_io.errors import CheckpointExistsError, CheckpointWriteError, TorchKerasIOError

_UMASK = os.umask(0)
os.umask(_UMASK)


# temporary files are named after the writer (host and pid), so that a later save can tell the
# leftovers of a killed writer from the file of one still writing, and remove only the former
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _stem(base: str) -> str:
    """The target's name in its temporary files' names, kept short enough for NAME_MAX."""
    if len(base) <= 150:
        return base
    return base[:100] + "~" + hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def tmp_prefix(base: str) -> str:
    """How this process's temporary files for a target named ``base`` begin (host and pid in it)."""
    return f".{_stem(base)}.tkio-{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def remove_stale_temps(directory: str, base: str) -> list:
    """Delete the temporary files of writers of ``base`` that died (killed mid-save) on this host;
    return their paths. Temporary files of live writers, of other hosts, and our own are kept."""
    pattern = re.compile(re.escape(f".{_stem(base)}.tkio-{_HOST}-") + r"(\d+)-[^/]*\.tmp\Z")
    removed = []
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it kills)
        return removed
    try:
        names = os.listdir(directory)
    except OSError:  # pragma: no cover - unreadable folder: nothing to tidy
        return removed
    for name in names:
        m = pattern.match(name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


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
    temporary file (a writer killed outright leaves it behind: the next successful save of the
    same target removes it). With ``overwrite=False`` an existing target raises
    :class:`CheckpointExistsError` (a ``FileExistsError``), checked again at the final step.
    """
    target = os.path.abspath(os.fspath(filepath))
    if not overwrite and os.path.lexists(target):
        raise CheckpointExistsError("already exists and overwrite=False", filepath=filepath)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory does not exist: '{directory}'")
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(os.path.basename(target)), suffix=".tmp", dir=directory)
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
        remove_stale_temps(directory, os.path.basename(target))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        write_error = _write_error(exc, filepath)
        if write_error is not None:
            raise write_error from exc
        raise


def _write_error(exc: BaseException, filepath) -> CheckpointWriteError | None:
    """A system-level write failure (HDF5 reports them as RuntimeError/OSError with ``errno = N``
    in the text) as one clear error; anything else (bugs, bad arguments) passes through as it is."""
    if isinstance(exc, TorchKerasIOError) or not isinstance(exc, (OSError, RuntimeError)):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    m = re.search(r"errno = (\d+)", str(exc))
    if code is None and m is None:
        return None
    code = code if code is not None else int(m.group(1))
    err = CheckpointWriteError(
        f"writing failed: {os.strerror(code)} (errno {code}); the previous file, if any, is unchanged "
        f"and the partial write was removed ({type(exc).__name__}: {exc})",
        filepath=filepath,
    )
    err.errno = code
    return err
