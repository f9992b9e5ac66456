"""Block I/O on HDF5 for every Keras layout: the :class:`Writer` of groups, attributes and
datasets (h5py's low-level API), and datasets read as lazy tensors (:func:`dataset_lazy`), block
by block (:class:`Rows`), plain ones straight from the file's bytes (:class:`RawFile`). Opening,
error mapping, attributes and path resolution are in :mod:`.hdf5`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Optional, Sequence

import h5py
import numpy as np
import torch
from h5py import h5a, h5d, h5g, h5i, h5o, h5p, h5s, h5t, h5z
from h5py._hl.filters import guess_chunk

from torchkeras_io._formats.hdf5 import (
    DTYPE_ATTR,
    HDF5_OBJECT_HEADER_LIMIT,
    encode_name,
    object_id,
    read_str_attr,
    save_attributes,
)
from torchkeras_io._tensors import (
    BLOCK_BYTES,
    BLOCK_DTYPES,
    BlockPlan,
    Lazy,
    Transfer,
    blocks,
    from_numpy,
    to_numpy,
    torch_dtype_of,
)
from torchkeras_io.errors import FileFormatError

# --------------------------------------------------------------------------------------- writer
_VLEN_ASCII = h5py.string_dtype("ascii")
_VLEN_UTF8 = h5py.string_dtype("utf-8")


_IMPLICIT = object()


class Writer:
    """The groups, attributes and datasets of the layout, made with h5py's low-level API.

    What it makes is what h5py's high-level calls make (``create_group``, ``create_dataset``
    with an intermediate group, ``attrs[name] = value``): the same datatypes, dataspaces and
    property lists, without the per-call overhead that dominates files with many small layers.
    """

    def __init__(
        self,
        transfer: Optional[Transfer] = None,
        compression: Optional[str] = None,
        gzip_level: Optional[int] = None,
        progress=None,
    ) -> None:
        self.transfer = transfer
        self.compression, self.gzip_level = compression, gzip_level
        self.progress = progress  # called with the bytes of each dataset written
        self._io = None  # the thread that writes a large dataset's blocks
        track_order = h5py.get_config().track_order
        self.dcpl = h5p.create(h5p.DATASET_CREATE)
        self.dcpl.set_obj_track_times(False)
        order = h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED
        self.dcpl.set_attr_creation_order(order if track_order else 0)
        self.gcpl = None
        if track_order:
            self.gcpl = h5p.create(h5p.GROUP_CREATE)
            self.gcpl.set_link_creation_order(order)
            self.gcpl.set_attr_creation_order(order)
        self._lcpl = {}
        self._types = {}
        self._scalar = h5s.create_simple(())

    def lcpl(self, cset: int):
        lcpl = self._lcpl.get(cset)
        if lcpl is None:
            lcpl = self._lcpl[cset] = h5p.create(h5p.LINK_CREATE)
            lcpl.set_create_intermediate_group(True)
            lcpl.set_char_encoding(cset)
        return lcpl

    def htype(self, dtype: np.dtype, logical: bool = True):
        key = (dtype, logical)
        tid = self._types.get(key)
        if tid is None:
            tid = self._types[key] = h5t.py_create(dtype, logical=logical)
        return tid

    def group(self, parent, name: str):
        bname, cset = encode_name(name)
        return h5g.create(parent, bname, lcpl=self.lcpl(cset), gcpl=self.gcpl)

    def parent_of(self, group, path: str, made: dict) -> tuple:
        """(group holding ``path``'s last part, that part), making intermediate groups as
        ``create_dataset`` does."""
        bpath, _ = encode_name(path)
        if b"/" not in bpath.lstrip(b"/"):
            return group, bpath
        parent, name = bpath.rsplit(b"/", 1)
        gid = made.get(parent)
        if gid is None or gid is _IMPLICIT:
            # made[None] is the group these paths live in when this writer made it (so only
            # what ``made`` records exists there); intermediate groups are _IMPLICIT entries
            if gid is _IMPLICIT or (made.get(None) is not group and _exists(group, parent)):
                gid = h5py.Group(group).require_group(parent).id
            else:
                gid = h5g.create(group, parent, lcpl=self.lcpl(h5t.CSET_ASCII), gcpl=self.gcpl)
                parts = parent.split(b"/")
                for i in range(1, len(parts)):
                    made.setdefault(b"/".join(parts[:i]), _IMPLICIT)
            made[parent] = gid
        return gid, name

    def attr(self, obj, name: str, value, fresh: bool = False) -> None:
        """``obj.attrs[name] = value`` for a str or a list of bytes (others: h5py's own call).
        ``fresh``: ``obj`` was just made here and has no attributes to replace."""
        if isinstance(value, str):
            data, dtype, space = np.array(value, dtype=_VLEN_UTF8), _VLEN_UTF8, self._scalar
        elif isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
            data = np.empty(len(value), dtype=_VLEN_ASCII)
            data[:] = value
            dtype, space = _VLEN_ASCII, h5s.create_simple((len(value),))
        else:
            h5py.AttributeManager(h5py.Group(obj) if isinstance(obj, h5g.GroupID) else h5py.Dataset(obj))[name] = value
            return
        bname, _ = encode_name(name)
        if not fresh and h5a.exists(obj, bname):
            h5a.delete(obj, bname)
        attr = h5a.create(obj, bname, self.htype(dtype), space)
        try:
            attr.write(data, mtype=self.htype(dtype, logical=False))
        except BaseException:
            attr.close()
            h5a.delete(obj, bname)
            raise
        attr.close()

    def names(self, obj, name: str, data: Sequence[str], fresh: bool = False) -> None:
        """:func:`save_attributes` on a low-level object."""
        encoded = [s.encode("utf-8") for s in data]
        if encoded and max(1, *map(len, encoded)) * len(encoded) <= HDF5_OBJECT_HEADER_LIMIT:
            self.attr(obj, name, encoded, fresh)  # fits in one attribute whatever numpy pads it to
        else:
            save_attributes(h5py.Group(obj), name, data)

    def dataset(self, group, path: str, lazy: Lazy, made: dict) -> None:
        """Write one lazy tensor, block by block when it is a large view of a CPU tensor: each
        block is written on a second thread while the next one is made (transposed) here."""
        parent, name = self.parent_of(group, path, made)
        if lazy.numel() * lazy.dtype.itemsize <= BLOCK_BYTES:
            value = lazy.read()  # small: one copy is cheaper than any bookkeeping
            parts = (((0,) * value.dim(), value),)
        else:
            parts = blocks(lazy, self.transfer)
        dset = shape = pending = written = None
        try:
            for origin, block in parts:
                array, marker = to_numpy(block)
                array = np.asarray(array, order="C")
                if dset is None:
                    shape = array.shape if tuple(array.shape) == lazy.shape else lazy.shape
                    dset = h5d.create(
                        parent,
                        name,
                        self.htype(array.dtype),
                        h5s.create_simple(shape),
                        dcpl=self.dataset_plist(shape, array.dtype.itemsize),
                    )
                    if marker is not None:
                        self.attr(dset, DTYPE_ATTR, marker, fresh=True)
                if array.shape == shape:
                    dset.write(h5s.ALL, h5s.ALL, array)
                    continue
                written = self.io().submit(_write_block, dset, origin, array)
                if pending is not None:
                    pending.result()  # that block's buffer is free for the next block
                pending, written = written, None
            if pending is not None:
                pending.result()
        finally:
            for f in (pending, written):  # after an error: nothing may still write
                if f is not None:
                    concurrent.futures.wait([f])
        if self.progress is not None:
            self.progress(lazy.numel() * lazy.dtype.itemsize)

    def dataset_plist(self, shape: tuple, itemsize: int):
        """The creation properties of a dataset: contiguous, or chunked and compressed.

        Chunks are the blocks :func:`blocks` writes and loads read (a slab along one dim,
        the other dims whole), so each block fills or reads whole chunks and HDF5 never has to
        decompress and compress a chunk again for a partly written one."""
        if self.compression is None or not shape or 0 in shape:
            return self.dcpl  # HDF5 cannot chunk scalars or empty datasets: those stay plain
        plan = BlockPlan(tuple(shape), itemsize, self.transfer.max_bytes if self.transfer else BLOCK_BYTES)
        chunk = list(shape)
        if plan.dim is not None:
            chunk[plan.dim] = plan.step
        if np.prod(chunk, dtype=np.float64) * itemsize >= 2**32:  # HDF5's chunk size limit
            chunk = list(guess_chunk(tuple(shape), None, itemsize))
        dcpl = self.dcpl.copy()
        dcpl.set_chunk(tuple(chunk))
        if self.compression == "gzip":
            dcpl.set_deflate(self.gzip_level)
        else:
            dcpl.set_filter(h5z.FILTER_LZF, h5z.FLAG_OPTIONAL)  # as h5py's create_dataset does
        return dcpl

    def io(self):
        if self._io is None:
            self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="torchkeras_io")
        return self._io

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None


def _write_block(dset, origin: tuple, array: np.ndarray) -> None:
    fspace = dset.get_space()
    fspace.select_hyperslab(origin, array.shape)
    dset.write(h5s.create_simple(array.shape), fspace, array)


def _exists(group, path: bytes) -> bool:
    if b"/" not in path:
        return group.links.exists(path)
    try:
        return h5py.Group(group).__contains__(path)
    except (KeyError, ValueError):
        return False


# --------------------------------------------------------------------------------------- reader
def dataset_lazy(dset, name: str, filepath: str, layer: str, file=None, raw: Optional[RawFile] = None) -> Lazy:
    """A lazy tensor for a dataset: its metadata checked now, its data read on demand.

    With ``file`` (the open file's id) the dataset is let go and opened again by its path for
    each read: an open HDF5 dataset holds some 12 KB, which for thousands of small weights
    outweighs the weights themselves. With ``raw`` (the file's bytes), contiguous unfiltered
    data is read straight from the file at its checked offset, without HDF5's read path."""
    dset = object_id(dset)
    if not isinstance(dset, h5d.DatasetID):
        raise FileFormatError("not a dataset", filepath=filepath, layer=layer, weight=name)
    try:
        dtype = dset.dtype
        shape = dset.shape
        marker = read_str_attr(dset, DTYPE_ATTR, filepath)
        dcpl = dset.get_create_plist()
        layout = dcpl.get_layout()
        is_external = dcpl.get_external_count() > 0 or layout == h5d.VIRTUAL
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise FileFormatError(f"unreadable dataset: {exc}", filepath=filepath, layer=layer, weight=name) from exc
    if is_external:
        raise FileFormatError(
            "external or virtual datasets are not allowed", filepath=filepath, layer=layer, weight=name
        )
    if shape is None:
        raise FileFormatError("empty (null-dataspace) dataset", filepath=filepath, layer=layer, weight=name)
    if dtype.kind not in "fiubcV" or (dtype.kind == "V" and dtype.itemsize != 2) or dtype.fields:
        raise FileFormatError(
            f"unsupported dtype {dtype} (weights must be numeric)", filepath=filepath, layer=layer, weight=name
        )
    try:
        tdtype = torch_dtype_of(dtype, marker)
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"unsupported dtype {dtype}: {exc}", filepath=filepath, layer=layer, weight=name) from exc

    shape = tuple(shape)
    handle = _Handle(dset, file)
    if marker is None and tdtype in BLOCK_DTYPES and dtype.isnative:
        # a type numpy and torch share: HDF5 (or a plain read) fills torch memory directly,
        # chunked and compressed data included
        offset = None
        if raw is not None and layout == h5d.CONTIGUOUS and dcpl.get_nfilters() == 0:
            offset = raw.offset_of(dset, shape, dtype, filepath, layer, name)
        rows = Rows(handle, shape, tdtype, filepath, layer, name, raw if offset is not None else None, offset)

        def read_rows():
            out = torch.empty(shape, dtype=tdtype)
            rows.read_block((0,) * len(shape), out)
            return out

        return Lazy(name, shape, tdtype, read_rows, root=rows)

    def read():
        try:
            array = h5py.Dataset(handle.open())[()]
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise FileFormatError(f"cannot read data: {exc}", filepath=filepath, layer=layer, weight=name) from exc
        return from_numpy(np.asarray(array), marker)

    return Lazy(name, shape, tdtype, read)


class _Handle:
    """A dataset kept open, or (given the file) its path, to open it again when needed."""

    __slots__ = ("dset", "file", "path")

    def __init__(self, dset, file=None) -> None:
        self.dset = self.file = self.path = None
        path = h5i.get_name(dset) if file is not None else None
        if path:
            self.file, self.path = file, path  # the link was checked: only hard links lead here
        else:
            self.dset = dset

    def open(self):
        return self.dset if self.dset is not None else h5o.open(self.file, self.path)


class RawFile:
    """The bytes of an open HDF5 file, for datasets stored plainly (contiguous, no filters, no
    external storage, file type = memory type): read with ``os.preadv`` at the offset HDF5
    reports, which skips HDF5's per-read overhead. Offsets are checked against the file size
    before any read, and the reads use HDF5's own descriptor of the file."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    @classmethod
    def of(cls, file: h5py.File) -> Optional[RawFile]:
        if not hasattr(os, "preadv") or file.driver != "sec2":
            return None  # only the default driver maps HDF5 addresses to file offsets 1:1
        try:
            return cls(file.id.get_vfd_handle())
        except (OSError, RuntimeError, ValueError, TypeError):
            return None

    def offset_of(self, dset, shape: tuple, dtype: np.dtype, filepath: str, layer: str, name: str) -> Optional[int]:
        """Where the dataset's bytes start in the file; None to leave the read to HDF5."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return None
        try:
            if not dset.get_type().equal(_native_type(dtype)):
                return None  # HDF5 would convert (e.g. a different precision): let it
            offset = dset.get_offset()
            stored = dset.get_storage_size()
        except (OSError, RuntimeError, ValueError, TypeError):
            return None  # HDF5's read path reports what is wrong
        if offset is None:
            return None  # never written: HDF5 supplies the fill value
        if stored != nbytes or offset < 0 or offset + nbytes > self.size:
            raise FileFormatError(
                f"data of {nbytes} bytes (stored: {stored}) at offset {offset} does not lie within the file "
                f"({self.size} bytes): truncated or corrupt",
                filepath=filepath,
                layer=layer,
                weight=name,
            )
        return offset

    def read(self, offset: int, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end:
            n = os.preadv(self.fd, [view[pos:]], offset + pos)
            if n <= 0:
                raise OSError(f"file ends at byte {offset + pos}, {end - pos} bytes short")
            pos += n


def _runs(shape: tuple, origin: tuple, block: tuple, itemsize: int) -> Optional[tuple]:
    """The hyperslab at ``origin`` of shape ``block`` as (first byte, run bytes, stride, runs)
    in the row-major data of ``shape``: None unless at most one dim is partial and the dims
    after it are whole (the slabs of :class:`_tensors.BlockPlan`)."""
    partial = [d for d in range(len(shape)) if block[d] != shape[d] or origin[d] != 0]
    if len(partial) > 1:
        return None
    if not partial:
        return 0, math.prod(shape) * itemsize, 0, 1
    d = partial[0]
    inner = math.prod(shape[d + 1 :]) * itemsize
    return origin[d] * inner, block[d] * inner, shape[d] * inner, math.prod(shape[:d])


@functools.cache
def _native_type(dtype: np.dtype):
    return h5t.py_create(dtype)


class Rows:
    """A dataset as a block source for :meth:`Lazy.read_into`: hyperslabs read straight into the
    caller's (CPU, contiguous) tensor, by HDF5 or, for plain storage, by ``preadv``."""

    __slots__ = ("handle", "shape", "dtype", "filepath", "layer", "name", "raw", "offset")

    def __init__(
        self,
        handle: _Handle,
        shape: tuple,
        dtype: torch.dtype,
        filepath: str,
        layer: str,
        name: str,
        raw: Optional[RawFile] = None,
        offset: Optional[int] = None,
    ) -> None:
        self.handle, self.shape, self.dtype = handle, shape, dtype
        self.filepath, self.layer, self.name = filepath, layer, name
        self.raw, self.offset = raw, offset

    @property
    def prechecked(self) -> bool:
        """True when the data's place in the file was checked: reading it cannot fail on the
        file's contents."""
        return self.raw is not None

    def read_block(self, origin: tuple, out: torch.Tensor) -> None:
        array = out.detach().numpy()
        runs = None
        if self.raw is not None and array.size:
            runs = _runs(self.shape, tuple(origin), tuple(array.shape), array.itemsize)
        try:
            if runs is not None:
                first, length, stride, count = runs
                view = memoryview(array.reshape(-1).view(np.uint8))
                for i in range(count):
                    self.raw.read(self.offset + first + i * stride, view[i * length : (i + 1) * length])
                return
            dset = self.handle.open()
            if tuple(array.shape) == self.shape:
                if array.size:
                    dset.read(h5s.ALL, h5s.ALL, array)
            else:
                fspace = dset.get_space()
                fspace.select_hyperslab(origin, array.shape)
                dset.read(h5s.create_simple(array.shape), fspace, array)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise FileFormatError(
                f"cannot read data: {exc}", filepath=self.filepath, layer=self.layer, weight=self.name
            ) from exc
