"""Lazy tensors: shapes and dtypes known up front, data produced on demand.

Both directions move data through :class:`Lazy` so that whole-model copies never exist: the
writer materialises one tensor at a time, and the loader checks every shape before it reads a
single byte. Large tensors do not even exist whole: :func:`blocks` and :meth:`Lazy.read_into`
move them in blocks of :data:`BLOCK_BYTES` through one reused buffer, transposing each block
with torch's 2-D transpose kernel.
"""

from __future__ import annotations

import math
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

    __slots__ = ("name", "shape", "dtype", "_read", "_origin", "_strided")

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
        self._strided = _UNSET

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
                shape = fn(torch.empty(self.shape, device="meta")).shape
        out = Lazy(name, shape, self.dtype, read)
        out._origin = ("map", self, fn)
        if strided is not _UNSET and (strided is None or strided.shape == out.shape):
            out._strided = strided
        return out

    def renamed(self, name: str) -> Lazy:
        out = Lazy(name, self.shape, self.dtype, self._read)
        out._origin, out._strided = self._origin, self._strided
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

    def read_into(self, target: torch.Tensor, transfer: Optional[Transfer] = None) -> None:
        """``target.copy_(self.read())``, reading a block source block by block straight into
        ``target`` (no full-size temporary, transposes done per block) when it can. A
        :class:`Transfer` shares its buffers between the tensors of one load."""
        view = self.strided()
        root = view.root if view is not None else None
        if (
            root is None
            or isinstance(root, torch.Tensor)
            or self.dtype not in _BLOCK_DTYPES
            or target.layout != torch.strided
            or tuple(target.shape) != self.shape
        ):
            target.copy_(self.read())
            return
        dst = _in_root_order(target.detach(), view, tuple(root.shape))
        if dst is None:
            target.copy_(self.read())
        elif target.device.type == "cpu":
            _load_blocks(root, dst, self.dtype, transfer)
        else:
            _load_blocks_to_device(root, dst, self.dtype, transfer)

    def scan(self, check: Callable[[torch.Tensor], None], transfer: Transfer) -> bool:
        """Read the stored data of a block source block by block into ``transfer``'s buffer and
        pass each block to ``check``, keeping nothing: proves the data readable (decompressible)
        and lets ``check`` look at every value, in bounded memory. False, with nothing read, when
        the value is not a view of a block source (read it whole instead)."""
        view = self.strided()
        root = view.root if view is not None else None
        if root is None or isinstance(root, torch.Tensor) or self.dtype not in _BLOCK_DTYPES:
            return False
        shape = tuple(root.shape)
        if math.prod(shape) == 0:
            return True
        plan = _Plan(shape, self.dtype.itemsize, transfer.max_bytes)
        if plan.dim is None:
            buf = torch.empty(shape, dtype=self.dtype)  # a shape no block plan fits (rare)
            root.read_block((0,) * len(shape), buf)
            check(buf)
            return True
        whole = torch.empty(shape, dtype=self.dtype, device="meta")  # block shapes, no memory
        raw = transfer.buffers()[0]
        for start in plan.starts:
            buf = _typed(raw, tuple(plan.slab(whole, start).shape), self.dtype)
            root.read_block(plan.origin(len(shape), start), buf)
            check(buf)
        return True

    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Lazy({self.name!r}, shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------- block data movement
#: dtypes that numpy and HDF5 take as they are (others go through to_numpy/from_numpy whole)
_BLOCK_DTYPES = frozenset(
    {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}
)
#: bytes per block when data moves in row blocks (a few MB: cache-friendly, and the most memory
#: a save or load holds beyond the model itself, per buffer)
BLOCK_BYTES = 2 << 20
# torch transposes 2-D blocks with a dedicated kernel only from this many elements on
_MIN_TRANSPOSE = 60 * 60


def _contiguous_strides(shape: Sequence[int]) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


def _probe(parent: Strided, dtype: torch.dtype, fn: Callable) -> Optional[Strided]:
    """Run ``fn`` on a meta stand-in of ``parent``: the result as a view of the root, or None
    when ``fn`` computes anything (a copy, arithmetic, a dtype change)."""
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
        out = fn(x)
    except Exception:  # noqa: BLE001 - any failure only means "no fast path"
        return None
    if not isinstance(out, torch.Tensor) or out.device.type != "meta" or out.dtype != dtype:
        return None
    if out is not x and out._base is not base:
        return None
    return Strided(parent.root, tuple(out.shape), tuple(out.stride()), int(out.storage_offset()))


def _strided_tensor(view: Strided) -> torch.Tensor:
    root = view.root
    return torch.as_strided(root.detach(), view.shape, view.stride, root.storage_offset() + view.offset)


def _joint_2d(shape, a_strides, b_strides):
    """Merge the dims of a same-shape copy that are contiguous in both tensors; size-1 dims go."""
    dims = [(n, a, b) for n, a, b in zip(shape, a_strides, b_strides) if n != 1]
    out = []
    for n, a, b in dims:
        if out and out[-1][1] == a * n and out[-1][2] == b * n:
            m, _, _ = out[-1]
            out[-1] = (m * n, a, b)
        else:
            out.append((n, a, b))
    return out


def _copy(
    dst: torch.Tensor, src: torch.Tensor, scratch: Optional[torch.Tensor] = None, spare_src: bool = False
) -> None:
    """``dst.copy_(src)`` for same-shape tensors, one of them contiguous; a transposing copy
    runs through torch's blocked 2-D transpose kernel instead of an element-wise gather.

    ``scratch``: a flat buffer of at least ``dst.numel()`` elements of ``dst``'s dtype.
    ``spare_src``: ``src`` is a contiguous buffer whose contents may be overwritten.
    """
    if dst.dtype == src.dtype and dst.numel() >= _MIN_TRANSPOSE:
        dims = _joint_2d(dst.shape, dst.stride(), src.stride())
        if len(dims) == 2:
            (r, d0, s0), (c, d1, s1) = dims
            if (d0, d1) == (c, 1) and s0 == 1 and s1 >= r:  # contiguous <- transposed
                d2 = dst.as_strided((r, c), (c, 1))
                s2 = src.as_strided((r, c), (1, s1))
                if s1 == r:
                    d2.copy_(s2)
                else:  # rows of the transposed source first, then the transpose kernel
                    tmp = _scratch(scratch, (c, r), dst.dtype)
                    _serial_copy(tmp, s2.t())
                    d2.copy_(tmp.t())
                return
            if (s0, s1) == (c, 1) and d0 == 1 and d1 >= r:  # transposed <- contiguous
                d2 = dst.as_strided((c, r), (d1, 1))
                s2 = src.as_strided((c, r), (1, c))
                if d1 == r:
                    d2.copy_(s2)
                else:
                    tmp = _scratch(scratch, (c, r), dst.dtype)
                    tmp.copy_(s2)
                    _serial_copy(d2, tmp)
                return
        if len(dims) == 3:
            # (a, b, c) with the dims in reverse memory order on one side: a convolution
            # kernel, Keras (k, in, out) <-> torch (out, in, k). Two row copies and one 2-D
            # transpose, each streaming through memory.
            (a, d0, s0), (b, d1, s1), (c, d2, s2) = dims
            contiguous = (b * c, c, 1)
            if (d0, d1, d2) == contiguous and (s0, s1) == (1, a) and s2 >= a * b:  # save
                tmp = _scratch(scratch, (b * a, c), dst.dtype)
                staged = dst.view(-1)[: a * b * c].view(c, b, a)  # dst is the staging buffer
                _serial_copy(staged, src.as_strided((c, b, a), (s2, s1, s0)))
                tmp.copy_(staged.view(c, b * a).t())
                _serial_copy(dst.as_strided((a, b, c), contiguous), tmp.view(b, a, c).permute(1, 0, 2))
                return
            if spare_src and (s0, s1, s2) == contiguous and (d0, d1) == (1, a) and d2 >= a * b:  # load
                tmp = _scratch(scratch, (b, a, c), dst.dtype)
                _serial_copy(tmp, src.as_strided((a, b, c), contiguous).permute(1, 0, 2))
                staged = src.as_strided((c, b * a), (b * a, 1))  # src is free: the staging buffer
                staged.copy_(tmp.view(b * a, c).t())
                _serial_copy(dst.as_strided((c, b, a), (d2, d1, d0)), staged.view(c, b, a))
                return
    if dst.dim():
        _serial_copy(dst, src)
    else:
        dst.copy_(src)


#: elements per copy call that torch runs on the calling thread (its parallel grain size)
_SERIAL_ELEMENTS = 32768


def _serial_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` in pieces small enough that torch does not start OpenMP threads.

    Between a block's single-threaded steps (HDF5 I/O, the 2-D transpose kernel) the OpenMP
    threads of a parallel copy spin-wait for more work, taking the CPU those steps need: on a
    2-CPU machine that made a load several times slower than copying on one thread."""
    rows = dst.shape[0]
    step = max(1, _SERIAL_ELEMENTS // max(1, dst[0].numel())) if rows else 1
    if step >= rows:
        dst.copy_(src)
        return
    for i in range(0, rows, step):
        dst[i : i + step].copy_(src[i : i + step])


def _scratch(buf: Optional[torch.Tensor], shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    n = math.prod(shape)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        return torch.empty(shape, dtype=dtype)
    return buf[:n].view(shape)


class Transfer:
    """The block buffers of one save or load, shared by all its tensors.

    Made once per call (``with Transfer() as t:``) so that block memory is not made and freed
    per tensor: freed buffers interleaved with HDF5's small allocations would fragment the heap
    and stay resident. The buffers go when the ``with`` block ends.

    Blocks are transposed on the calling thread. Two block buffers let a writer write one
    block on another thread while the next is made (see :func:`blocks`); loads read and
    transpose on the calling thread, which measured fastest on the 2-CPU machine this was tuned
    on (a reading thread and the transposes competed for the CPUs rather than overlapping).
    """

    def __init__(self, max_bytes: Optional[int] = None) -> None:
        self.max_bytes = max_bytes or BLOCK_BYTES
        self._buffers: Optional[tuple] = None
        self._pinned: Optional[tuple] = None

    def buffers(self) -> tuple:
        """(block, block, scratch): byte buffers of ``max_bytes`` each."""
        if self._buffers is None:
            self._buffers = tuple(torch.empty(self.max_bytes, dtype=torch.uint8) for _ in range(3))
        return self._buffers

    def pinned(self) -> tuple:
        """(block, block): byte buffers of ``max_bytes`` for copies to and from an accelerator,
        page-locked when CUDA is there (so that copies run asynchronously), plain otherwise."""
        if self._pinned is None:
            pin = torch.cuda.is_available()
            self._pinned = tuple(torch.empty(self.max_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2))
        return self._pinned

    def close(self) -> None:
        self._buffers = self._pinned = None

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _typed(raw: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor of ``shape`` and ``dtype`` at the start of the byte buffer ``raw``."""
    return raw[: math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


class _Plan:
    """How a tensor of ``shape`` splits into blocks: slabs ``[start, start + step)`` along
    ``dim`` with every other dim whole, each at most ``max_bytes``. ``dim`` is the first one
    whose slabs leave at most 64 contiguous runs in the row-major data
    (``prod(shape[:dim])``): dim 0 for a Dense kernel, the input channels of a
    ``(kh, kw, in, out)`` Conv2D kernel. ``dim`` is None when no dim gives blocks smaller
    than the whole (blocks at most half of it)."""

    __slots__ = ("dim", "step", "starts")

    def __init__(self, shape: tuple, itemsize: int, max_bytes: int) -> None:
        self.dim = self.step = None
        self.starts = []
        runs = 1
        for d, size in enumerate(shape):
            if runs > 64:
                break
            slab = math.prod(shape) // max(size, 1) * itemsize  # bytes of one index along d
            if slab <= max_bytes and 2 * (max_bytes // slab) <= size:
                self.dim, self.step = d, max_bytes // slab
                self.starts = list(range(0, size, self.step))
                return
            runs *= size

    def origin(self, ndim: int, start: int) -> tuple:
        return tuple(start if d == self.dim else 0 for d in range(ndim))

    def slab(self, t: torch.Tensor, start: int) -> torch.Tensor:
        return t.narrow(self.dim, start, min(self.step, t.shape[self.dim] - start))


def blocks(lazy: Lazy, transfer: Optional[Transfer] = None):
    """The value of ``lazy`` as ``(origin, contiguous CPU tensor)`` blocks, in order: each block
    is the hyperslab of the value at index ``origin`` with the block's shape.

    A value that is a strided view of a CPU tensor never exists as a whole: each block is
    copied (transposed) from the tensor into one of two reused buffers. Any other value is one
    block, ``lazy.read()``. A yielded block stays valid until the second next one is asked for,
    so the caller may still be writing block k while block k + 1 is made.
    """
    view = lazy.strided()
    if (
        view is None
        or not isinstance(view.root, torch.Tensor)
        or view.root.device.type == "meta"
        or lazy.dtype not in _BLOCK_DTYPES
        or view.root.dtype != lazy.dtype
    ):
        value = lazy.read()
        yield (0,) * value.dim(), value
        return
    value = _strided_tensor(view)
    if value.device.type != "cpu":
        yield from _device_blocks(value, transfer)
        return
    zero = (0,) * value.dim()
    if value.dim() == 0 or value.is_contiguous():
        yield zero, value
        return
    if transfer is None:
        with Transfer() as transfer:
            yield from blocks(lazy, transfer)
        return
    plan = _Plan(tuple(value.shape), value.element_size(), transfer.max_bytes)
    if plan.dim is None:
        yield zero, value.contiguous()
        return
    *raws, scratch = transfer.buffers()
    for k, start in enumerate(plan.starts):
        src = plan.slab(value, start)
        buf = _typed(raws[k % 2], tuple(src.shape), value.dtype)
        _copy(buf, src, scratch.view(value.dtype))
        yield plan.origin(value.dim(), start), buf


def _side_stream(device: torch.device):
    """A CUDA stream for the copies of one tensor (None off CUDA: copies are synchronous), made
    to wait for the work already queued on the current stream (e.g. ``module.to(device)``)."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def _device_blocks(value: torch.Tensor, transfer: Optional[Transfer]):
    """:func:`blocks` of a tensor on an accelerator: the device makes each block contiguous
    (transposes it), the block is copied into one of two pinned host buffers on a side stream,
    and is yielded once that copy is done; the writer writes block k on its thread while block
    k + 1 is copied. Runs unchanged on CPU tensors (plain buffers, synchronous copies)."""
    if transfer is None:
        with Transfer() as transfer:
            yield from _device_blocks(value, transfer)
        return
    zero = (0,) * value.dim()
    if value.dim() == 0 or value.numel() * value.element_size() <= transfer.max_bytes:
        yield zero, value.cpu().contiguous()
        return
    plan = _Plan(tuple(value.shape), value.element_size(), transfer.max_bytes)
    if plan.dim is None:
        yield zero, value.cpu().contiguous()
        return
    stream = _side_stream(value.device)
    bufs = transfer.pinned()
    for k, start in enumerate(plan.starts):
        src = plan.slab(value, start)
        buf = _typed(bufs[k % 2], tuple(src.shape), value.dtype)
        if stream is None:
            buf.copy_(src)
        else:
            with torch.cuda.stream(stream):
                buf.copy_(src.contiguous(), non_blocking=True)
            stream.synchronize()
        yield plan.origin(value.dim(), start), buf


def _load_blocks_to_device(source, dst: torch.Tensor, dtype: torch.dtype, transfer: Optional[Transfer]) -> None:
    """:func:`_load_blocks` into a tensor on an accelerator: blocks are read from ``source`` into
    two pinned host buffers in turn, each copied to the device (``non_blocking`` on a side
    stream, the device doing the transpose) while the next one is read. Runs unchanged on CPU
    tensors (plain buffers, synchronous copies), which is how its logic is tested without a GPU."""
    if dst.numel() == 0:
        return
    if transfer is None:
        with Transfer() as transfer:
            return _load_blocks_to_device(source, dst, dtype, transfer)
    plan = _Plan(tuple(dst.shape), dtype.itemsize, transfer.max_bytes)
    zero = (0,) * dst.dim()
    if plan.dim is None:
        if dst.numel() * dtype.itemsize <= transfer.max_bytes:
            buf = _typed(transfer.pinned()[0], tuple(dst.shape), dtype)
        else:  # a shape no block plan fits (rare): one host copy of the tensor
            buf = torch.empty(tuple(dst.shape), dtype=dtype)
        source.read_block(zero, buf)
        dst.copy_(buf)
        return
    stream = _side_stream(dst.device)
    bufs = transfer.pinned()
    done = [None, None]  # per buffer: the event after its last copy to the device
    for k, start in enumerate(plan.starts):
        part = plan.slab(dst, start)
        if done[k % 2] is not None:
            done[k % 2].synchronize()  # that copy has read the buffer: it may be refilled
        buf = _typed(bufs[k % 2], tuple(part.shape), dtype)
        source.read_block(plan.origin(dst.dim(), start), buf)
        if stream is None:
            part.copy_(buf)
        else:
            with torch.cuda.stream(stream):
                part.copy_(buf, non_blocking=True)
                done[k % 2] = torch.cuda.Event()
                done[k % 2].record(stream)
    if stream is not None:
        torch.cuda.current_stream(dst.device).wait_stream(stream)


def _in_root_order(target: torch.Tensor, view: Strided, root_shape: tuple) -> Optional[torch.Tensor]:
    """``target`` seen in the root's element order and shape: a view ``d`` of ``target`` with
    ``d[i] == target's element that comes from root[i]``; None unless ``view`` visits every root
    element exactly once (a permutation of a reshape)."""
    shape, stride = view.shape, view.stride
    if view.offset != 0 or math.prod(shape) != math.prod(root_shape):
        return None
    dims = sorted((i for i in range(len(shape)) if shape[i] != 1), key=lambda i: -stride[i])
    expect = 1
    for i in reversed(dims):
        if stride[i] != expect:
            return None
        expect *= shape[i]
    order = dims + [i for i in range(len(shape)) if shape[i] == 1]
    try:
        return target.permute(order).view(root_shape)
    except RuntimeError:
        return None


def _load_blocks(source, dst: torch.Tensor, dtype: torch.dtype, transfer: Optional[Transfer]) -> None:
    """Fill ``dst`` (shaped like ``source``) from ``source``: straight into ``dst`` when its
    layout and dtype match, else block by block through one reused buffer, each block copied
    (transposed) into place."""
    if dst.numel() == 0:
        return
    zero = (0,) * dst.dim()
    if dst.dtype == dtype and dst.is_contiguous():
        source.read_block(zero, dst)
        return
    if transfer is None:
        with Transfer() as transfer:
            return _load_blocks(source, dst, dtype, transfer)
    plan = _Plan(tuple(dst.shape), dtype.itemsize, transfer.max_bytes)
    if plan.dim is None:
        buf = torch.empty(tuple(dst.shape), dtype=dtype)
        source.read_block(zero, buf)
        _copy(dst, buf, None, True)
        return
    raw, _, scratch = transfer.buffers()
    for start in plan.starts:
        part = plan.slab(dst, start)
        buf = _typed(raw, tuple(part.shape), dtype)
        source.read_block(plan.origin(dst.dim(), start), buf)
        _copy(part, buf, scratch.view(dtype), True)


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
