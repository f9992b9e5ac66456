"""The Keras full-model HDF5 file (``model.save("x.h5")``): its JSON attributes.

The weights inside it (``/model_weights``) are read by :mod:`._h5format`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import h5py

from torchkeras_io._formats.legacy_h5 import HDF5_SIGNATURE, read_str_attr
from torchkeras_io.errors import FileFormatError, _h5_errors

MAX_CONFIG_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass
class ModelFileInfo:
    model_config: Optional[str]
    training_config: Optional[str]
    torch_config: Optional[str]
    keras_version: Optional[str]
    backend: Optional[str]


def read_model_file_info(filepath: os.PathLike | str) -> ModelFileInfo:
    """The model and training configs (JSON text) and writer version of a full-model file."""
    filepath = os.fspath(filepath)
    with open(filepath, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE and not h5py.is_hdf5(filepath):
        hint = " (it is a ZIP archive: a Keras 3 .keras file?)" if head[:4] == b"PK\x03\x04" else ""
        raise FileFormatError(f"not an HDF5 file{hint}", filepath=filepath)
    try:
        with _h5_errors(filepath), h5py.File(filepath, "r") as f:
            out = ModelFileInfo(
                _attr(f, "model_config", filepath),
                _attr(f, "training_config", filepath),
                _attr(f, "torch_config", filepath),
                read_str_attr(f, "keras_version", filepath),
                read_str_attr(f, "backend", filepath),
            )
    except (OSError, RuntimeError, ValueError) as exc:
        raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=filepath) from exc
    return out


def _attr(f: h5py.File, name: str, filepath: str) -> Optional[str]:
    if name not in f.attrs:
        return None
    try:
        info = f.attrs.get_id(name)
        if info.get_storage_size() > MAX_CONFIG_BYTES:
            raise FileFormatError(f"attribute '{name}' is larger than {MAX_CONFIG_BYTES} bytes", filepath=filepath)
    except (KeyError, AttributeError):
        pass
    return read_str_attr(f, name, filepath)
