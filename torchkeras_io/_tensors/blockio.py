"""Block data movement: a tensor's value moved between file layout and parameter layout in
blocks of :data:`BLOCK_BYTES` through buffers reused for a whole save or load (a
:class:`Transfer`), each block transposed on its way, so that no full-size temporary exists.

Values arrive as lazy tensors (:class:`~torchkeras_io._tensors.lazy.Lazy`, used by duck type:
``strided()``, ``read()``, ``dtype``, ``shape``) whose ``Strided`` view names the root: a
CPU or device tensor (saves) or a block source (loads) with ``shape`` and
``read_block(origin, out)``.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from typing import Callable, Optional

import torch

from torchkeras_io._tensors.dtypes import BLOCK_DTYPES

#: bytes per block when data moves in row blocks (a few MB: cache-friendly, and the most memory
#: a save or load holds beyond the model itself, per buffer)
BLOCK_BYTES = 2 << 20
# torch transposes 2-D blocks with a dedicated kernel only from this many elements on
_MIN_TRANSPOSE = 60 * 60


def _strided_tensor(view) -> torch.Tensor:
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

    Between a block's single-threaded steps (reads, the 2-D transpose kernel) the OpenMP
    threads of a parallel copy spin-wait for more work, taking the CPU those steps need: on a
    2-CPU machine that made a load several times slower than copying on one thread, and a
    convolution block's row copy (rows of 57,344 elements) 10x slower. Rows above the grain
    size are split too."""
    n = dst.numel()
    if n <= _SERIAL_ELEMENTS or dst.dim() == 0:
        dst.copy_(src)
        return
    if dst.dim() == 1:
        for i in range(0, n, _SERIAL_ELEMENTS):
            dst[i : i + _SERIAL_ELEMENTS].copy_(src[i : i + _SERIAL_ELEMENTS])
        return
    row = n // dst.shape[0]
    if row > _SERIAL_ELEMENTS:
        for i in range(dst.shape[0]):
            _serial_copy(dst[i], src[i])
        return
    step = _SERIAL_ELEMENTS // row
    for i in range(0, dst.shape[0], step):
        dst[i : i + step].copy_(src[i : i + step])


def _scratch(buf: Optional[torch.Tensor], shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    n = math.prod(shape)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        return torch.empty(shape, dtype=dtype)
    return buf[:n].view(shape)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: threads that move the blocks of one tensor on a CPU load: two measured 1.4x faster than one
#: on an idle 2-CPU machine (a thread reads its next block while the other transposes), three
#: no faster; on a busy one the second thread finds no free CPU (benchmarks/README.md, issue 15)
CPU_LANES = 2
#: threads that read blocks and feed them to an accelerator: a measurement prototype on an H200
#: needed four readers to keep the host-to-device copies busy (one reader ran at a third).
DEVICE_LANES = 4


class Transfer:
    """The block buffers (and block threads) of one save or load, shared by all its tensors.

    Made once per call (``with Transfer() as t:``) so that block memory is not made and freed
    per tensor: freed buffers interleaved with HDF5's small allocations would fragment the heap
    and stay resident. The buffers and threads go when the ``with`` block ends.

    A load moves the blocks of one tensor on up to ``lanes`` threads, each with its own block
    and scratch buffer (:meth:`lane`), so one thread reads while another transposes (reads and
    torch's copies release the GIL). A save transposes on the calling thread into two block
    buffers in turn while the writer writes the other (see :func:`blocks`).
    """

    def __init__(self, max_bytes: Optional[int] = None, lanes: Optional[int] = None) -> None:
        self.max_bytes = max_bytes or BLOCK_BYTES
        self.lanes = max(1, lanes if lanes is not None else min(CPU_LANES, _cpus()))
        self._buffers: Optional[tuple] = None
        self._lanes: dict = {}
        self._pinned: Optional[tuple] = None
        self._device: dict = {}
        self._pool = None
        self._workers = 0

    def buffers(self) -> tuple:
        """(block, block, scratch): byte buffers of ``max_bytes`` each."""
        if self._buffers is None:
            self._buffers = tuple(torch.empty(self.max_bytes, dtype=torch.uint8) for _ in range(3))
        return self._buffers

    @classmethod
    def within(cls, total_bytes: int) -> Transfer:
        """A transfer whose buffers stay within about 1/64 of ``total_bytes`` (the bytes one
        load moves), for loads whose whole footprint counts, e.g. materialising a model from
        the file (at 2 MiB blocks, buffers and the whole-tensor reads of tensors just above a
        block were 11 MiB beyond a 100 MiB model; at 256 KiB, 3.3 MiB)."""
        return cls(max_bytes=min(BLOCK_BYTES, max(1 << 16, total_bytes // 512 // 4096 * 4096)), lanes=1)

    @property
    def lane_bytes(self) -> int:
        """Bytes of a block on one of several CPU lanes: the lanes together hold 1.5x the
        buffer bytes of one lane of ``max_bytes`` (peak extra memory within 0.05x of a 256 MiB
        kernel), and 1.5 MiB blocks on two lanes measured as fast as 2 MiB ones."""
        if self.lanes == 1:
            return self.max_bytes
        return max(64, self.max_bytes * 3 // (2 * self.lanes) // 64 * 64)  # whole elements of any dtype

    def lane(self, i: int) -> tuple:
        """(block, scratch) byte buffers of lane ``i``, at least :attr:`lane_bytes` each; lane 0
        shares :meth:`buffers`."""
        if i == 0:
            raw, _, scratch = self.buffers()
            return raw, scratch
        if i not in self._lanes:
            self._lanes[i] = tuple(torch.empty(self.lane_bytes, dtype=torch.uint8) for _ in range(2))
        return self._lanes[i]

    def pinned(self) -> tuple:
        """(block, block): byte buffers of ``max_bytes`` for copies to and from an accelerator,
        page-locked when CUDA is there (so that copies run asynchronously), plain otherwise."""
        if self._pinned is None:
            pin = torch.cuda.is_available()
            self._pinned = tuple(torch.empty(self.max_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2))
        return self._pinned

    def device_lane(self, i: int, device: torch.device) -> tuple:
        """(pinned host block, device block, stream) of reader lane ``i`` for ``device``; the
        stream is None off CUDA, where the copies are synchronous."""
        key = (i, str(device))
        if key not in self._device:
            host = torch.empty(self.max_bytes, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            if stream is None:
                stage = torch.empty(self.max_bytes, dtype=torch.uint8, device=device)
            else:
                with torch.cuda.stream(stream):  # owned by the lane's stream: not reused early
                    stage = torch.empty(self.max_bytes, dtype=torch.uint8, device=device)
            self._device[key] = (host, stage, stream)
        return self._device[key]

    def run(self, lanes: int, work: Callable[[int, Callable[[], bool]], None]) -> None:
        """``work(lane, stopped)`` on ``lanes`` threads (the calling thread is lane 0); returns
        once every lane has returned, re-raising the first error. ``stopped()`` turns true when
        a lane failed, so the others stop at their next block: after an error nothing is still
        writing into the caller's tensors."""
        if lanes <= 1:
            work(0, lambda: False)
            return
        if self._pool is None or self._workers < lanes - 1:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(lanes - 1, thread_name_prefix="torchkeras_io")
            self._workers = lanes - 1
        failed = threading.Event()

        def lane(i: int) -> None:
            try:
                work(i, failed.is_set)
            except BaseException:
                failed.set()
                raise

        futures = [self._pool.submit(lane, i) for i in range(1, lanes)]
        try:
            lane(0)
        finally:
            concurrent.futures.wait(futures)
        for f in futures:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._buffers = self._pinned = self._pool = None
        self._lanes, self._device, self._workers = {}, {}, 0

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _typed(raw: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor of ``shape`` and ``dtype`` at the start of the byte buffer ``raw``."""
    return raw[: math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


class BlockPlan:
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


def blocks(lazy, transfer: Optional[Transfer] = None):
    """The value of ``lazy`` as ``(origin, contiguous CPU tensor)`` blocks, in order: each block
    is the hyperslab of the value at index ``origin`` with the block's shape.

    A value that is a strided view of a CPU tensor, or a concatenation of such views (a gate
    reorder, :meth:`Lazy.pieces`), never exists as a whole: each block is copied (transposed)
    from the tensor into one of two reused buffers. Any other value is one block,
    ``lazy.read()``. A yielded block stays valid until the second next one is asked for, so the
    caller may still be writing block k while block k + 1 is made.
    """
    parts = _tensor_views(lazy)
    if parts is None:
        value = lazy.read()
        yield (0,) * value.dim(), value
        return
    if len(parts) == 1 and parts[0][1].device.type != "cpu":
        yield from device_blocks(parts[0][1], transfer)
        return
    if transfer is None:
        with Transfer() as transfer:
            yield from blocks(lazy, transfer)
        return
    *raws, scratch = transfer.buffers()
    k = 0  # blocks that went through a buffer: consecutive ones alternate, across parts too
    for at, value in parts:
        if value.dim() == 0 or value.is_contiguous():
            yield at, value
            continue
        plan = BlockPlan(tuple(value.shape), value.element_size(), transfer.max_bytes)
        if plan.dim is None:
            yield at, value.contiguous()
            continue
        for start in plan.starts:
            src = plan.slab(value, start)
            buf = _typed(raws[k % 2], tuple(src.shape), value.dtype)
            k += 1
            _copy(buf, src, scratch.view(value.dtype))
            yield tuple(a + b for a, b in zip(at, plan.origin(value.dim(), start))), buf


def _tensor_views(lazy) -> Optional[list]:
    """``[(origin in the value, strided view of a tensor)]`` making up ``lazy``'s value: one
    view, or the pieces of a concatenation of views of one CPU tensor; None when the value is
    computed otherwise."""
    view = lazy.strided()
    if view is not None:
        views = [((0,) * len(view.shape), view)]
    else:
        pieces = lazy.pieces() if hasattr(lazy, "pieces") else None
        if pieces is None:
            return None
        dim, found = pieces
        views = [(tuple(start if d == dim else 0 for d in range(len(v.shape))), v) for start, v in found]
    out = []
    for at, v in views:
        root = v.root
        if not isinstance(root, torch.Tensor) or root.device.type == "meta" or lazy.dtype not in BLOCK_DTYPES:
            return None
        if root.dtype != lazy.dtype or (len(views) > 1 and root.device.type != "cpu"):
            return None
        out.append((at, _strided_tensor(v)))
    return out


def _side_stream(device: torch.device):
    """A CUDA stream for the copies of one tensor (None off CUDA: copies are synchronous), made
    to wait for the work already queued on the current stream (e.g. ``module.to(device)``)."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def device_blocks(value: torch.Tensor, transfer: Optional[Transfer]):
    """:func:`blocks` of a tensor on an accelerator: the device makes each block contiguous
    (transposes it), the block is copied into one of two pinned host buffers on a side stream,
    and is yielded once that copy is done; the writer writes block k on its thread while block
    k + 1 is copied. Runs unchanged on CPU tensors (plain buffers, synchronous copies)."""
    if transfer is None:
        with Transfer() as transfer:
            yield from device_blocks(value, transfer)
        return
    zero = (0,) * value.dim()
    if value.dim() == 0 or value.numel() * value.element_size() <= transfer.max_bytes:
        yield zero, value.cpu().contiguous()
        return
    plan = BlockPlan(tuple(value.shape), value.element_size(), transfer.max_bytes)
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


def _claimer(starts: list) -> Callable[[], Optional[int]]:
    """The blocks' starts handed out one at a time to whichever lane asks (a shared machine
    slows lanes unevenly, so blocks are not dealt out in advance); None when all are taken."""
    it, lock = iter(starts), threading.Lock()

    def claim() -> Optional[int]:
        with lock:
            return next(it, None)

    return claim


def load_blocks_to_device(
    source, dst: torch.Tensor, dtype: torch.dtype, transfer: Optional[Transfer], lanes: Optional[int] = None
) -> None:
    """:func:`_load_blocks` into a tensor on an accelerator: ``lanes`` threads (default
    :data:`DEVICE_LANES`) each read blocks from ``source`` into a pinned host block of their
    own, copy it (``non_blocking``, on the lane's stream) into a device block, and copy that
    into place on the device, which does the transpose or dtype cast. A lane waits for its
    stream only before refilling its host block, so reads, copies and transposes of different
    lanes overlap. Device memory beyond ``dst``: one block per lane.

    Runs unchanged on CPU tensors (plain buffers, synchronous copies), which is how its logic
    is tested without a GPU."""
    if dst.numel() == 0:
        return
    if transfer is None:
        with Transfer() as transfer:
            return load_blocks_to_device(source, dst, dtype, transfer, lanes)
    plan = BlockPlan(tuple(dst.shape), dtype.itemsize, transfer.max_bytes)
    device = dst.device
    current = torch.cuda.current_stream(device) if device.type == "cuda" else None
    if plan.dim is None:
        zero = (0,) * dst.dim()
        if dst.numel() * dtype.itemsize <= transfer.max_bytes:
            host, _, stream = transfer.device_lane(0, device)
            if stream is not None:
                stream.synchronize()  # lane 0's last copy of an earlier tensor has read it
            buf = _typed(host, tuple(dst.shape), dtype)
        else:  # a shape no block plan fits (rare): one host copy of the tensor
            buf = torch.empty(tuple(dst.shape), dtype=dtype)
        source.read_block(zero, buf)
        dst.copy_(buf)  # synchronous: the host block is free again when it returns
        return
    claim = _claimer(plan.starts)

    def work(i: int, stopped: Callable[[], bool]) -> None:
        host, stage, stream = transfer.device_lane(i, device)
        if stream is not None:
            stream.wait_stream(current)  # work queued before, e.g. ``module.to(device)``
        try:
            while not stopped():
                start = claim()
                if start is None:
                    return
                part = plan.slab(dst, start)
                if stream is not None:
                    stream.synchronize()  # the lane's last copy has read its host block
                buf = _typed(host, tuple(part.shape), dtype)
                source.read_block(plan.origin(dst.dim(), start), buf)
                staged = _typed(stage, tuple(part.shape), dtype)
                if stream is None:
                    staged.copy_(buf)
                    part.copy_(staged)
                else:
                    with torch.cuda.stream(stream):
                        staged.copy_(buf, non_blocking=True)
                        part.copy_(staged)
        finally:
            if stream is not None:
                current.wait_stream(stream)  # later work on dst sees every block

    transfer.run(min(lanes or DEVICE_LANES, len(plan.starts)), work)


def in_root_order(target: torch.Tensor, view, root_shape: tuple) -> Optional[torch.Tensor]:
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
    layout and dtype match, else block by block, each block read into a lane's buffer and
    copied (transposed) into place, on :attr:`Transfer.lanes` threads."""
    if dst.numel() == 0:
        return
    zero = (0,) * dst.dim()
    if dst.dtype == dtype and dst.is_contiguous():
        source.read_block(zero, dst)
        return
    if transfer is None:
        with Transfer() as transfer:
            return _load_blocks(source, dst, dtype, transfer)
    plan = BlockPlan(tuple(dst.shape), dtype.itemsize, transfer.lane_bytes)
    if plan.dim is None:
        buf = torch.empty(tuple(dst.shape), dtype=dtype)
        source.read_block(zero, buf)
        _copy(dst, buf, None, True)
        return
    claim = _claimer(plan.starts)

    def work(i: int, stopped: Callable[[], bool]) -> None:
        raw, scratch = transfer.lane(i)
        while not stopped():
            start = claim()
            if start is None:
                return
            part = plan.slab(dst, start)
            buf = _typed(raw, tuple(part.shape), dtype)
            source.read_block(plan.origin(dst.dim(), start), buf)
            _copy(part, buf, scratch.view(dtype), True)

    transfer.run(min(transfer.lanes, len(plan.starts)), work)


def read_into(lazy, target: torch.Tensor, transfer: Optional[Transfer] = None) -> None:
    """``target.copy_(lazy.read())``, reading a block source block by block straight into
    ``target`` (no full-size temporary, transposes done per block) when it can: a value that is
    a strided view of the source, or a concatenation of such views (``lazy.pieces()``). A
    :class:`Transfer` shares its buffers between the tensors of one load."""
    moves = _moves(lazy, target)
    if moves is None:
        target.copy_(lazy.read())
        return
    for source, dst in moves:
        if target.device.type == "cpu":
            _load_blocks(source, dst, lazy.dtype, transfer)
        else:
            load_blocks_to_device(source, dst, lazy.dtype, transfer)


def block_root(lazy):
    """The block source ``lazy``'s value is read from, or None (a tensor root, a computed
    value, a dtype numpy lacks)."""
    view = lazy.strided()
    if view is None:
        pieces = lazy.pieces() if hasattr(lazy, "pieces") else None
        if pieces is None:
            return None
        roots = {id(v.root) for _, v in pieces[1]}
        view = pieces[1][0][1] if len(roots) == 1 else None
    root = view.root if view is not None else None
    if root is None or isinstance(root, torch.Tensor) or lazy.dtype not in BLOCK_DTYPES:
        return None
    return root


def _moves(lazy, target: torch.Tensor) -> Optional[list]:
    """``[(block source, destination view in the source's order)]`` that together fill
    ``target`` with ``lazy``'s value, all worked out before anything is read; None when the
    value has to be read whole."""
    root = block_root(lazy)
    if root is None or target.layout != torch.strided or tuple(target.shape) != lazy.shape:
        return None
    target = target.detach()
    view = lazy.strided()
    if view is not None:
        dst = in_root_order(target, view, tuple(root.shape))
        return None if dst is None else [(root, dst)]
    dim, pieces = lazy.pieces()
    moves = []
    for start, piece in pieces:
        box = _box(piece, tuple(root.shape))
        if box is None:
            return None
        origin, shape, inner = box
        dst = in_root_order(target.narrow(dim, start, piece.shape[dim]), inner, shape)
        if dst is None:
            return None
        moves.append((root if shape == tuple(root.shape) else _Box(root, origin, shape), dst))
    return moves


class _Box:
    """The hyperslab ``[origin, origin + shape)`` of a block source, as a block source."""

    __slots__ = ("source", "origin", "shape")

    def __init__(self, source, origin: tuple, shape: tuple) -> None:
        self.source, self.origin, self.shape = source, origin, shape

    def read_block(self, origin: tuple, out: torch.Tensor) -> None:
        self.source.read_block(tuple(a + b for a, b in zip(self.origin, origin)), out)


def _box(view, root_shape: tuple) -> Optional[tuple]:
    """``view`` (a strided view of a row-major root of ``root_shape``) as a permuted hyperslab:
    ``(origin, box shape, the view as a strided view of the box)``, or None when it is not one
    (a dim with a stride that is no root dim's, two dims on one root dim, a reshape)."""
    strides, acc = [], 1
    for n in reversed(root_shape):
        strides.append(acc)
        acc *= n
    strides.reverse()
    by_stride = {st: d for d, st in enumerate(strides) if root_shape[d] != 1}
    extent = [1] * len(root_shape)
    owner = []
    for n, st in zip(view.shape, view.stride):
        d = by_stride.get(st) if n != 1 else None
        if n != 1 and (d is None or extent[d] != 1):
            return None
        if d is not None:
            extent[d] = n
        owner.append(d)
    origin, rest = [], view.offset
    for d, st in enumerate(strides):
        o, rest = divmod(rest, st)
        if o + extent[d] > root_shape[d]:
            return None
        origin.append(o)
    box_strides, acc = [0] * len(root_shape), 1
    for d in reversed(range(len(root_shape))):
        box_strides[d] = acc
        acc *= extent[d]
    inner = tuple(box_strides[d] if d is not None else 1 for d in owner)
    return tuple(origin), tuple(extent), _View(view.shape, inner)


class _View:
    """A strided view with no root (:func:`in_root_order` needs only its shape and strides)."""

    __slots__ = ("shape", "stride", "offset")

    def __init__(self, shape: tuple, stride: tuple) -> None:
        self.shape, self.stride, self.offset = shape, stride, 0


def scan(lazy, check: Callable[[torch.Tensor], None], transfer: Transfer) -> bool:
    """Read the stored data of a block source block by block into ``transfer``'s buffer and
    pass each block to ``check``, keeping nothing: proves the data readable (decompressible)
    and lets ``check`` look at every value, in bounded memory (the whole source, a superset of
    the value's elements). False, with nothing read, when the value is not read from a block
    source (read it whole instead)."""
    root = block_root(lazy)
    if root is None:
        return False
    shape = tuple(root.shape)
    if math.prod(shape) == 0:
        return True
    plan = BlockPlan(shape, lazy.dtype.itemsize, transfer.max_bytes)
    if plan.dim is None:
        buf = torch.empty(shape, dtype=lazy.dtype)  # a shape no block plan fits (rare)
        root.read_block((0,) * len(shape), buf)
        check(buf)
        return True
    whole = torch.empty(shape, dtype=lazy.dtype, device="meta")  # block shapes, no memory
    raw = transfer.buffers()[0]
    for start in plan.starts:
        buf = _typed(raw, tuple(plan.slab(whole, start).shape), lazy.dtype)
        root.read_block(plan.origin(len(shape), start), buf)
        check(buf)
    return True
