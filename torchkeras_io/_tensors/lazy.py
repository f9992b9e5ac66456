"""Lazy tensors: shapes and dtypes known up front, data produced on demand.

Both directions move data through :class:`Lazy` so that whole-model copies never exist: the
writer materialises one tensor at a time, and the loader checks every shape before it reads a
single byte. A lazy value that is a view of a tensor or of a block source (a dataset) knows
itself as a :class:`Strided` view of that root, and a concatenation of such views (a gate
reorder) as its pieces, which is what lets :mod:`.blockio` move it in blocks instead of whole
transposed copies.
"""

from __future__ import annotations

import math
import types
from typing import Callable, Optional, Sequence

import torch

from torchkeras_io._tensors.blockio import Transfer, block_root, read_into, scan


class Strided:
    """A strided view of a root: the value is ``as_strided(root, shape, stride, offset)``.

    ``root`` is a torch tensor (strides and offset count elements from its first element) or a
    block source (row-major data, e.g. a dataset) with ``shape``, ``dtype`` and
    ``read_block(origin, out)``, which fills the contiguous CPU tensor ``out`` with the
    hyperslab at index ``origin`` of ``out``'s shape.
    """

    __slots__ = ("root", "shape", "stride", "offset")

    def __init__(self, root, shape: tuple, stride: tuple, offset: int) -> None:
        self.root = root
        self.shape = shape
        self.stride = stride
        self.offset = offset


_UNSET = object()


class Lazy:
    """A tensor that is only computed when :meth:`read` is called.

    A lazy tensor that is a plain tensor, a block source (a dataset), or a chain of view
    transforms (``t``, ``permute``, ``reshape`` of contiguous data, …) of one also knows its
    value as a :class:`Strided` view of that root (found by running the transforms on a meta
    tensor), so :func:`blocks` and :meth:`read_into` can move the data in cache-sized blocks
    instead of materialising whole transposed copies.
    """

    __slots__ = ("name", "shape", "dtype", "_read", "_origin", "_strided", "_pieces")

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        read: Callable[[], torch.Tensor],
        *,
        root=None,
    ) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self._read = read
        self._origin = None if root is None else ("root", root)
        self._strided = self._pieces = _UNSET

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor, fn: Optional[Callable] = None, shape=None) -> Lazy:
        """Wrap an existing tensor, optionally with a layout transform applied on read."""
        base = cls(name, tensor.shape, tensor.dtype, lambda: tensor.detach(), root=tensor)
        if fn is None:
            return base
        return base._mapped(name, lambda: fn(tensor.detach()), fn, shape)

    def read(self) -> torch.Tensor:
        out = self._read()
        if tuple(out.shape) != self.shape:  # a broken transform must not go unnoticed
            raise AssertionError(f"{self.name}: produced shape {tuple(out.shape)}, declared {self.shape}")
        return out

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], shape: Optional[Sequence[int]] = None) -> Lazy:
        """A new lazy tensor: ``fn`` applied to this one's value."""
        return self._mapped(self.name, lambda: fn(self.read()), fn, shape)

    def _mapped(self, name: str, read: Callable, fn: Callable, shape) -> Lazy:
        strided = _UNSET
        if shape is None:
            # the shape needs a probe anyway: probe the strided view, which also tells whether
            # ``fn`` is a pure view and where it points
            parent = self.strided()
            if parent is not None:
                strided = _probe(parent, self.dtype, fn)
            if strided is not None and strided is not _UNSET:
                shape = strided.shape
            else:
                with _CatRecorder():
                    shape = fn(torch.empty(self.shape, device="meta")).shape
        out = Lazy(name, shape, self.dtype, read)
        out._origin = ("map", self, fn)
        if strided is not _UNSET and (strided is None or strided.shape == out.shape):
            out._strided = strided
        return out

    def renamed(self, name: str) -> Lazy:
        out = Lazy(name, self.shape, self.dtype, self._read)
        out._origin, out._strided, out._pieces = self._origin, self._strided, self._pieces
        return out

    def strided(self) -> Optional[Strided]:
        """This value as a strided view of its root, or None when it is computed otherwise."""
        if self._strided is _UNSET:
            self._strided = self._resolve()
        return self._strided

    def _resolve(self) -> Optional[Strided]:
        origin = self._origin
        if origin is None:
            return None
        if origin[0] == "root":
            root = origin[1]
            if isinstance(root, torch.Tensor):
                if root.layout != torch.strided or root.is_conj() or root.is_neg() or root.is_quantized:
                    return None
                return Strided(root, tuple(root.shape), tuple(root.stride()), 0)
            return Strided(root, self.shape, _contiguous_strides(self.shape), 0)
        _, parent_lazy, fn = origin
        parent = parent_lazy.strided()
        if parent is None:
            return None
        out = _probe(parent, parent_lazy.dtype, fn)
        return out if out is not None and out.shape == self.shape else None

    def pieces(self) -> Optional[tuple]:
        """This value as ``torch.cat`` of strided views of one root, ``(dim, [(start, Strided),
        ...])`` (each view is ``value.narrow(dim, start, view.shape[dim])``), or None. Gate
        reorders such as GRU's ``z, r, h <-> r, z, n`` are such concatenations: they can then
        move in blocks like a plain transpose. None when :meth:`strided` is not None."""
        if self._pieces is _UNSET:
            self._pieces = None
            origin = self._origin
            if origin is not None and origin[0] == "map" and self.strided() is None:
                parent = origin[1].strided()
                if parent is not None:
                    self._pieces = _probe_cat(parent, origin[1].dtype, origin[2], self.shape)
        return self._pieces

    def prechecked(self) -> bool:
        """True when the value is read from a block source whose data cannot fail to read on
        the file's contents (its place in the file was checked): a load may read it straight
        into the module without proving it first."""
        root = block_root(self)
        return root is not None and bool(getattr(root, "prechecked", False))

    def read_into(self, target: torch.Tensor, transfer: Optional[Transfer] = None) -> None:
        """``target.copy_(self.read())``, moving the data block by block when it can (see
        :func:`~torchkeras_io._tensors.blockio.read_into`)."""
        read_into(self, target, transfer)

    def scan(self, check: Callable[[torch.Tensor], None], transfer: Transfer) -> bool:
        """Pass the stored data to ``check`` block by block, keeping nothing (see
        :func:`~torchkeras_io._tensors.blockio.scan`)."""
        return scan(self, check, transfer)

    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Lazy({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def _contiguous_strides(shape: Sequence[int]) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


_PURE = (int, float, str, bool, type(None), torch.dtype)
#: probe results by (transform code and captured values, parent view, dtype): a model's
#: thousands of tensors share a handful of transforms, and a probe (meta tensors through
#: torch's dispatcher) costs ~25 us, most of the per-tensor cost of a file of small tensors
_PROBES: dict = {}
_PROBES_MAX = 4096


def _pure(value) -> bool:
    if isinstance(value, tuple):
        return all(_pure(v) for v in value)
    return isinstance(value, _PURE)


def _probe_key(parent: Strided, dtype: torch.dtype, fn: Callable) -> Optional[tuple]:
    """What a probe's result depends on, when ``fn`` is a plain function whose captured values
    are immutable scalars and tuples (``lambda a: a.permute(perm)``); None otherwise (a
    closure over a tensor or a mutable object may compute something else next time)."""
    if type(fn) is not types.FunctionType:
        return None
    captured = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            return None
        if not _pure(value):
            return None
        captured.append(value)
    defaults = (fn.__defaults__ or (), tuple(sorted((fn.__kwdefaults__ or {}).items())))
    if not _pure(defaults):
        return None
    return fn.__code__, tuple(captured), defaults, parent.shape, parent.stride, parent.offset, dtype


def _probe(parent: Strided, dtype: torch.dtype, fn: Callable) -> Optional[Strided]:
    """Run ``fn`` on a meta stand-in of ``parent``: the result as a view of the root, or None
    when ``fn`` computes anything (a copy, arithmetic, a dtype change)."""
    key = _probe_key(parent, dtype, fn)
    if key is not None:
        try:
            found = _PROBES[key]
        except KeyError:
            pass
        else:
            return None if found is None else Strided(parent.root, *found)
    out = _run_probe(parent, dtype, fn)
    if key is not None:
        if len(_PROBES) >= _PROBES_MAX:
            _PROBES.clear()
        _PROBES[key] = None if out is None else (out.shape, out.stride, out.offset)
    return out


def _run_probe(parent: Strided, dtype: torch.dtype, fn: Callable) -> Optional[Strided]:
    span = 1
    for size, stride in zip(parent.shape, parent.stride):
        if size == 0:
            return None
        span += (size - 1) * abs(stride)
    if any(s < 0 for s in parent.stride):
        return None
    try:
        base = torch.empty(parent.offset + span, dtype=dtype, device="meta")
        x = base.as_strided(parent.shape, parent.stride, parent.offset)
        with _CatRecorder():
            out = fn(x)
    except Exception:  # noqa: BLE001 - any failure only means "no fast path"
        return None
    if not isinstance(out, torch.Tensor) or out.device.type != "meta" or out.dtype != dtype:
        return None
    if out is not x and out._base is not base:
        return None
    return Strided(parent.root, tuple(out.shape), tuple(out.stride()), int(out.storage_offset()))


_CAT = {torch.cat, torch.concat, torch.concatenate}


class _CatRecorder(torch.overrides.TorchFunctionMode):
    """Records the inputs of every ``torch.cat`` of meta tensors run under it, by result.

    The result is a new meta tensor of the concatenation's shape, made here: torch's own meta
    ``cat`` imports ``torch._dynamo`` on first use, 1.5 s and 84 MiB of resident memory in a
    process that loads or saves a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.cats: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _CAT:
            return func(*args, **kwargs)
        tensors = list(args[0] if args else kwargs.get("tensors"))
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        out = _meta_cat(tensors, dim) if len(args) <= 2 and set(kwargs) <= {"tensors", "dim"} else None
        if out is None:
            return func(*args, **kwargs)
        self.cats[id(out)] = (out, tensors, dim)
        return out


def _meta_cat(tensors: list, dim: int) -> Optional[torch.Tensor]:
    """An empty meta tensor shaped like ``torch.cat(tensors, dim)``; None unless every input is
    a meta tensor of one dtype and rank, equal outside ``dim``."""
    if not tensors or not all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tensors):
        return None
    first = tensors[0]
    if first.dim() == 0 or any(t.dtype != first.dtype or t.dim() != first.dim() for t in tensors):
        return None
    if not -first.dim() <= dim < first.dim():
        return None
    dim %= first.dim()
    shape = list(first.shape)
    if any(list(t.shape[:dim]) + list(t.shape[dim + 1 :]) != shape[:dim] + shape[dim + 1 :] for t in tensors):
        return None
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=first.dtype, device="meta")


def _probe_cat(parent: Strided, dtype: torch.dtype, fn: Callable, shape: tuple) -> Optional[tuple]:
    """:meth:`Lazy.pieces` of ``fn`` applied to ``parent``: ``fn`` run on a meta stand-in, its
    result a ``torch.cat`` whose inputs are all views of the stand-in."""
    if any(s == 0 for s in parent.shape) or any(s < 0 for s in parent.stride):
        return None
    span = 1 + sum((n - 1) * st for n, st in zip(parent.shape, parent.stride))
    try:
        base = torch.empty(parent.offset + span, dtype=dtype, device="meta")
        x = base.as_strided(parent.shape, parent.stride, parent.offset)
        with _CatRecorder() as rec:
            out = fn(x)
    except Exception:  # noqa: BLE001 - any failure only means "no fast path"
        return None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        return None
    found, perm = rec.cats.get(id(out)), None
    if found is None and out._base is not None:
        # a permuted view of a concatenation (a GRU kernel saved: ``cat(...).t()``) is the
        # concatenation of the permuted pieces
        found = rec.cats.get(id(out._base))
        perm = None if found is None else _permutation(out, found[0])
        if perm is None:
            return None
    if found is None or found[0] is not (out if perm is None else out._base):
        return None
    _, parts, dim = found
    dim = dim % out.dim()
    if perm is not None:
        parts, dim = [t.permute(perm) if isinstance(t, torch.Tensor) else t for t in parts], perm.index(dim)
    pieces, start = [], 0
    for t in parts:
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or (t is not x and t._base is not base):
            return None
        pieces.append((start, Strided(parent.root, tuple(t.shape), tuple(t.stride()), int(t.storage_offset()))))
        start += t.shape[dim]
    return (dim, pieces) if start == out.shape[dim] else None


def _permutation(view: torch.Tensor, of: torch.Tensor) -> Optional[list]:
    """``perm`` with ``view`` equal to ``of.permute(perm)`` (``of`` contiguous), or None."""
    if view.storage_offset() != of.storage_offset() or not of.is_contiguous() or 1 in of.shape:
        return None
    perm = []
    for n, st in zip(view.shape, view.stride()):
        d = next((d for d in range(of.dim()) if of.stride(d) == st and of.shape[d] == n), None)
        if d is None or d in perm:
            return None
        perm.append(d)
    return perm if len(perm) == of.dim() else None
