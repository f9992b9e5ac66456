"""Flat tensor files as bytes: safetensors and torch ``state_dict`` files (``torch.save``, zip).

A flat file is ``{name: tensor}`` in file order, plus string metadata for safetensors. Nothing here
knows about layers: whether the names are torch keys (``layers.dense.weight``) or Keras
``<layer>/<weight>`` names is recorded by the writer under :data:`NAMES_KEY`, and the Keras layer
order under :data:`LAYOUT_KEY`, for whoever groups the names.

Both readers keep hostile files harmless: the safetensors header is parsed by the safetensors
package, which caps its size and checks every offset against the file before any tensor is read;
torch files are read with ``torch.load(weights_only=True)`` only (tensors and plain containers, no
classes from the pickle); a bare pickle is refused by :mod:`.detect` before anything opens it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping, Optional

import torch

from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._tensors import Lazy
from torchkeras_io.errors import FileFormatError

NAMES_KEY = "torchkeras_io.names"  # safetensors metadata: "keras" (<layer>/<weight>) or "torch"
LAYOUT_KEY = "torchkeras_io.layout"  # safetensors metadata: [[layer, [weight, ...]], ...] in Keras order
#: a checkpoint dict that holds its state_dict one level down, under one of these keys
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}  # fmt: skip


class FlatFile:
    """What a flat file holds: ``tensors`` (``{name: Lazy}``, in file order) and ``metadata``.

    The tensors read from the open file until :meth:`close` (also a context manager)."""

    def __init__(self, tensors: dict, metadata: dict, stack: Optional[contextlib.ExitStack] = None) -> None:
        self.tensors = tensors
        self.metadata = metadata
        self._stack = stack

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()

    def __enter__(self) -> FlatFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _safetensors(doing: str):
    try:
        import safetensors
        import safetensors.torch
    except ImportError as exc:
        raise ImportError(f"{doing} safetensors files needs the safetensors package: pip install safetensors",
                          name="safetensors") from exc  # fmt: skip
    return safetensors


def read_safetensors(path: os.PathLike | str) -> FlatFile:
    """Open a safetensors file: its tensors, read on demand, and its metadata."""
    path = os.fspath(path)
    st = _safetensors("reading")
    stack = contextlib.ExitStack()
    try:
        f = stack.enter_context(st.safe_open(path, framework="pt"))
        tensors = {}
        for key in f.keys():
            sl = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
            if dtype is None:
                raise FileFormatError(f"unsupported dtype {sl.get_dtype()}", filepath=path, weight=key)
            tensors[key] = Lazy(key, sl.get_shape(), dtype, lambda k=key: _get(f, k, path))
        metadata = f.metadata() or {}
    except st.SafetensorError as exc:
        stack.close()
        raise FileFormatError(f"not a valid safetensors file: {exc}", filepath=path) from exc
    except BaseException:
        stack.close()
        raise
    return FlatFile(tensors, dict(metadata), stack)


def _get(f, key: str, path: str) -> torch.Tensor:
    import safetensors

    try:
        return f.get_tensor(key)
    except safetensors.SafetensorError as exc:
        raise FileFormatError(f"not a valid safetensors file: {exc}", filepath=path, weight=key) from exc


def read_torch(path: os.PathLike | str) -> FlatFile:
    """Load a ``torch.save`` state_dict (or a checkpoint dict holding one under ``state_dict``,
    ``model_state_dict`` or ``model``), memory-mapped."""
    path = os.fspath(path)
    try:
        # weights_only: tensors and plain containers only, no arbitrary classes from the pickle
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"not a loadable torch state_dict (weights_only): {first}", filepath=path) from exc
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise FileFormatError(f"holds a {type(obj).__name__}, not a state_dict", filepath=path)
    tensors = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FileFormatError("not a state_dict: every entry must be a tensor under a string key",
                                  filepath=path, weight=str(key))  # fmt: skip
        tensors[key] = Lazy(key, value.shape, value.dtype, lambda v=value: v)
    return FlatFile(tensors, {})


def write_safetensors(
    path: os.PathLike | str, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None,
    *, overwrite: bool = True,
) -> None:  # fmt: skip
    """Write ``tensors`` and string ``metadata`` as a safetensors file, atomically."""
    st = _safetensors("writing")
    # safetensors refuses tensors that share memory; clones keep the values bit for bit
    seen, unique = set(), {}
    for k, v in _on_cpu(tensors).items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        unique[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    with atomic_write_path(path, overwrite=overwrite) as tmp:
        st.torch.save_file(unique, tmp, metadata=dict(metadata or {}))


def write_torch(path: os.PathLike | str, tensors: Mapping[str, torch.Tensor], *, overwrite: bool = True) -> None:
    """Write ``tensors`` as a ``torch.save`` state_dict, atomically."""
    tensors = _on_cpu(tensors)
    with atomic_write_path(path, overwrite=overwrite) as tmp:
        torch.save(tensors, tmp)


def _on_cpu(tensors: Mapping[str, torch.Tensor]) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
