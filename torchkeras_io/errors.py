"""The library's exception hierarchy.

Every error raised for a bad file or a bad argument derives from :class:`TorchKerasIOError` and
carries the file path and, where one is involved, the Keras layer and weight names.
"""

from __future__ import annotations

import os
from typing import Optional


class TorchKerasIOError(Exception):
    """Base class of every error torchkeras_io raises on bad files or arguments."""

    def __init__(
        self,
        message: str,
        *,
        filepath: Optional[os.PathLike | str] = None,
        layer: Optional[str] = None,
        weight: Optional[str] = None,
    ) -> None:
        self.message = message
        self.filepath = os.fspath(filepath) if filepath is not None else None
        self.layer = layer
        self.weight = weight
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.filepath is not None:
            where.append(f"file '{self.filepath}'")
        if self.layer is not None:
            where.append(f"layer '{self.layer}'")
        if self.weight is not None:
            where.append(f"weight '{self.weight}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):  # keep the keyword-only context when the error crosses processes
        return (_rebuild, (type(self), self.message, self.filepath, self.layer, self.weight))


def _rebuild(cls, message, filepath, layer, weight):
    return cls(message, filepath=filepath, layer=layer, weight=weight)


class FileFormatError(TorchKerasIOError, ValueError):
    """The file is not a readable Keras checkpoint: not HDF5, truncated, or missing structure."""


class WeightMismatchError(TorchKerasIOError, ValueError):
    """The file's layers or weights do not fit the module (count or shape)."""


class UnsupportedLayerError(TorchKerasIOError, NotImplementedError):
    """A layer or layout that has no faithful torch (or Keras) equivalent."""


class CheckpointExistsError(TorchKerasIOError, FileExistsError):
    """``overwrite=False`` and the target path already exists."""


class CheckpointWriteError(TorchKerasIOError, OSError):
    """Writing a file failed (disk full, file-size limit, I/O error); the previous file at the path
    is unchanged. ``errno`` is the system error number when one is known (ENOSPC, EFBIG, ...)."""


class TorchKerasIOWarning(UserWarning):
    """Warnings about skipped weights and approximate conversions."""
