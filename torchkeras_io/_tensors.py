"""Lazy tensors: shapes and dtypes known up front, data produced on demand.

Both directions move data through :class:`Lazy` so that whole-model copies never exist: the
writer materialises one tensor at a time, and the loader checks every shape before it reads a
single byte.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

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


class Lazy:
    """A tensor that is only computed when :meth:`read` is called."""

    __slots__ = ("name", "shape", "dtype", "_read")

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        read: Callable[[], torch.Tensor],
    ) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self._read = read

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor, fn: Optional[Callable] = None, shape=None) -> Lazy:
        """Wrap an existing tensor, optionally with a layout transform applied on read."""
        if fn is None:
            return cls(name, tensor.shape, tensor.dtype, lambda: tensor.detach())
        out_shape = shape if shape is not None else fn(torch.empty(tensor.shape, device="meta")).shape
        return cls(name, out_shape, tensor.dtype, lambda: fn(tensor.detach()))

    def read(self) -> torch.Tensor:
        out = self._read()
        if tuple(out.shape) != self.shape:  # a broken transform must not go unnoticed
            raise AssertionError(f"{self.name}: produced shape {tuple(out.shape)}, declared {self.shape}")
        return out

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], shape: Optional[Sequence[int]] = None) -> Lazy:
        """A new lazy tensor: ``fn`` applied to this one's value."""
        if shape is None:
            shape = fn(torch.empty(self.shape, device="meta")).shape
        return Lazy(self.name, shape, self.dtype, lambda: fn(self.read()))

    def renamed(self, name: str) -> Lazy:
        return Lazy(name, self.shape, self.dtype, self._read)

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self) -> str:
        return f"Lazy({self.name!r}, shape={self.shape}, dtype={self.dtype})"


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
    return torch.from_numpy(np.zeros((), dtype=np_dtype)).dtype


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs with equal payloads compare equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point and a.element_size() in _INT_OF_WIDTH:
        a = a.contiguous().view(_INT_OF_WIDTH[a.element_size()])
        b = b.contiguous().view(_INT_OF_WIDTH[b.element_size()])
    return torch.equal(a, b)
