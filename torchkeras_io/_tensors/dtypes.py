"""Tensors across the numpy boundary: dtypes numpy lacks (bfloat16, float8) travel as raw
integers of the same width plus a marker, and bit-exact comparison."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

# numpy has no bfloat16 or float8 types: such tensors cross the numpy boundary as raw integers
# of the same width (or, for bfloat16, as float32 which Keras can also read), plus a marker.
_RAW_VIEW = {
    torch.bfloat16: torch.int16,
    getattr(torch, "float8_e4m3fn", None): torch.uint8,
    getattr(torch, "float8_e5m2", None): torch.uint8,
    getattr(torch, "float8_e4m3fnuz", None): torch.uint8,
    getattr(torch, "float8_e5m2fnuz", None): torch.uint8,
}
_RAW_VIEW.pop(None, None)

_TORCH_BY_NAME = {str(dt).removeprefix("torch."): dt for dt in _RAW_VIEW}

#: dtypes that numpy and HDF5 take as they are (others go through to_numpy/from_numpy whole)
BLOCK_DTYPES = frozenset(
    {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}
)


def to_numpy(tensor: torch.Tensor) -> tuple[np.ndarray, Optional[str]]:
    """A CPU numpy view of ``tensor`` and the torch dtype name to record when numpy lacks it."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    if tensor.dtype == torch.bfloat16:
        # float32 is exact for bfloat16 values and readable by every Keras
        return tensor.float().numpy(), "bfloat16"
    raw = _RAW_VIEW.get(tensor.dtype)
    if raw is not None:
        return tensor.contiguous().view(raw).numpy(), str(tensor.dtype).removeprefix("torch.")
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    return tensor.numpy(), None


def from_numpy(array: np.ndarray, marker: Optional[str]) -> torch.Tensor:
    """Inverse of :func:`to_numpy`."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2 and marker is None:
        marker = "bfloat16"  # Keras 3 writes bfloat16 as 2-byte opaque data without a marker
        array = array.view(np.int16)
    if array.dtype.kind == "V":
        array = array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.itemsize in (1, 2, 4, 8) else array
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if array.ndim else torch.from_numpy(np.array(array))
    if marker is not None:
        target = _TORCH_BY_NAME.get(marker)
        if target is None:
            raise ValueError(f"unknown dtype marker {marker!r}")
        if tensor.dtype.is_floating_point:
            tensor = tensor.to(target)
        else:
            tensor = tensor.view(target)
    return tensor


def torch_dtype_of(np_dtype: np.dtype, marker: Optional[str]) -> torch.dtype:
    """The torch dtype a dataset of ``np_dtype`` (and optional marker) will be read as."""
    if marker is not None:
        if marker not in _TORCH_BY_NAME:
            raise ValueError(f"unknown dtype marker {marker!r}")
        return _TORCH_BY_NAME[marker]
    if np_dtype.kind == "V" and np_dtype.itemsize == 2:
        return torch.bfloat16
    found = _TORCH_OF_NUMPY.get(np_dtype)
    if found is None:
        # torch's own mapping (byte order and all), asked once per dtype: a file of thousands
        # of small datasets asked it per dataset
        found = _TORCH_OF_NUMPY[np_dtype] = torch.from_numpy(np.zeros((), dtype=np_dtype)).dtype
    return found


_TORCH_OF_NUMPY: dict = {}


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs with equal payloads compare equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point and a.element_size() in _INT_OF_WIDTH:
        a = a.contiguous().view(_INT_OF_WIDTH[a.element_size()])
        b = b.contiguous().view(_INT_OF_WIDTH[b.element_size()])
    return torch.equal(a, b)
