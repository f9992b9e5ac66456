"""Which Keras (or flat tensor) format a file is, from its bytes, and which one a new file gets.

Every reader of the library asks here, never the file name: a ``.keras`` file from Keras <= 2.12
is HDF5, a ``.weights.h5`` from TF <= 2.11 has the legacy layout. :func:`sniff` tells the byte
families apart (HDF5, ZIP, JSON) cheaply; :func:`detect` names the exact :class:`Format`, looking
inside the HDF5 file or ZIP directory where the family alone does not say.
"""

from __future__ import annotations

import enum
import os
import zipfile
from typing import Optional

import h5py

from torchkeras_io._formats.hdf5 import HDF5_SIGNATURE, ZIP_SIGNATURE, open_readonly
from torchkeras_io._formats.keras3_store import VARS
from torchkeras_io._formats.keras_archive import CONFIG
from torchkeras_io.errors import FileFormatError, TorchKerasIOError


class Format(str, enum.Enum):
    """The kinds of checkpoint file the library tells apart; the values are the CLI's names."""

    LEGACY_MODEL = "h5-model"  # model.save("x.h5"): attributes + /model_weights
    LEGACY_WEIGHTS = "h5-weights"  # model.save_weights("x.h5")
    KERAS3_WEIGHTS = "weights-h5"  # Keras 3 variable store, model.save_weights("x.weights.h5")
    KERAS = "keras"  # Keras 3 model archive (ZIP)
    SHARDED = "weights-json"  # Keras 3 sharded store: the .weights.json index
    SAFETENSORS = "safetensors"
    TORCH = "torch"  # torch.save's zip format

    def __str__(self) -> str:
        return self.value


def sniff(filepath: os.PathLike | str) -> str:
    """``"hdf5"``, ``"zip"``, ``"json"`` or ``"unknown"``, from the file's first bytes."""
    filepath = os.fspath(filepath)
    try:
        with open(filepath, "rb") as fh:
            head = fh.read(512)
    except IsADirectoryError as exc:
        raise FileFormatError("is a directory, not a Keras file", filepath=filepath) from exc
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(ZIP_SIGNATURE) or head.startswith(b"PK\x05\x06"):  # the latter: an empty archive
        return "zip"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "json"
    if h5py.is_hdf5(filepath):  # a user block before the superblock
        return "hdf5"
    return "unknown"


def is_v3_store(f: h5py.Group) -> bool:
    """True for the saving_lib layout (root ``layers``/``vars`` groups, no legacy ``layer_names``)."""
    attrs = f.attrs
    if "layer_names" in attrs or "layer_names0" in attrs or "model_weights" in f:
        return False
    return VARS in f or "layers" in f or "_layer_checkpoint_dependencies" in f


def hdf5_format(f: h5py.File) -> Optional[Format]:
    """The layout of an open HDF5 file: legacy weights, legacy model or Keras 3 store; None if
    it is none of them."""
    attrs = f.attrs
    if "layer_names" in attrs or "layer_names0" in attrs:
        return Format.LEGACY_WEIGHTS
    if "model_weights" in f:
        return Format.LEGACY_MODEL
    if is_v3_store(f):
        return Format.KERAS3_WEIGHTS
    return None


def detect(filepath: os.PathLike | str) -> Format:
    """The file's :class:`Format` from its bytes, or a :class:`FileFormatError` saying what it is not."""
    path = os.fspath(filepath)
    try:
        kind = sniff(path)
    except OSError as exc:
        raise FileFormatError(f"cannot read: {exc.strerror or exc}", filepath=path) from exc
    if kind == "hdf5":
        with open_readonly(path) as f:
            try:
                found = hdf5_format(f)
            except (OSError, RuntimeError, ValueError) as exc:
                raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=path) from exc
        if found is None:
            raise FileFormatError("an HDF5 file, but not a Keras checkpoint (no layer_names, model_weights "
                                  "or layers/ group)", filepath=path)  # fmt: skip
        return found
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise FileFormatError(f"a damaged ZIP archive: {exc}", filepath=path) from exc
        if CONFIG in names:
            return Format.KERAS
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return Format.TORCH
        raise FileFormatError("a ZIP archive that is neither a .keras model nor a torch.save file", filepath=path)
    if kind == "json":
        return Format.SHARDED  # its index is checked when read
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8:
            return Format.SAFETENSORS
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        raise FileFormatError("a pickle (legacy torch.save format?): not read, since unpickling can run code; "
                              "re-save it with torch.save in the default zip format", filepath=path)  # fmt: skip
    raise FileFormatError("unknown format: not HDF5, a .keras/torch ZIP archive or safetensors", filepath=path)


def chosen_format(filepath: os.PathLike | str, format: Optional[str], v3_suffix: str) -> str:
    """``"keras"`` (Keras 3 saving_lib) or ``"h5"`` (legacy HDF5) for a file to write: ``format``, or
    Keras 3's choice by file name (``v3_suffix``: ``.keras`` for models, ``.weights.h5`` for weights)."""
    if format is None:
        return "keras" if os.fspath(filepath).endswith(v3_suffix) else "h5"
    if format not in ("keras", "h5"):
        raise TorchKerasIOError(f"format must be 'keras' or 'h5', got {format!r}", filepath=os.fspath(filepath))
    return format
