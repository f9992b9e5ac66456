"""The Keras legacy-HDF5 weights layout: reading and writing, and nothing about layers.

Layout (see shared/reference/keras_h5_formats.md §2–5)::

    <weights group>   @layer_names (chunked past 64 KB) @backend @keras_version
      <layer>/        @weight_names (chunked)  datasets at <layer>/<weight name>
        __torch__/    torch-only state Keras has no slot for, listed in @torch_extra_names
      top_level_model_weights/   the model's own variables

The weights group is the file root for ``save_weights`` files and ``/model_weights`` for
full-model files.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
from typing import Any, Iterable, Optional, Sequence

import h5py
import numpy as np
import torch
from h5py import h5a, h5d, h5g, h5i, h5l, h5o, h5p, h5s, h5t, h5z
from h5py._hl.filters import guess_chunk

from torchkeras_io._tensors import (
    _BLOCK_DTYPES,
    BLOCK_BYTES,
    Lazy,
    Transfer,
    _Plan,
    blocks,
    from_numpy,
    to_numpy,
    torch_dtype_of,
)
from torchkeras_io.errors import FileFormatError

HDF5_OBJECT_HEADER_LIMIT = 64512
KERAS_VERSION = "2.15.0"  # the Keras dialect our files follow; any non-"1" version works for readers
BACKEND = "torch"
TOP_LEVEL = "top_level_model_weights"
EXTRA_GROUP = "__torch__"
EXTRA_ATTR = "torch_extra_names"
DTYPE_ATTR = "torch_dtype"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class LayerRecord:
    """One Keras layer group: its weights in Keras order and torch-only extras."""

    name: str
    weights: Sequence[Lazy]
    extras: Sequence[Lazy] = ()
    attrs: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------- attributes
def decode(value: Any) -> Any:
    """Decode an HDF5 string attribute (str, bytes, numpy bytes, or arrays of them)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return decode(value[()])
        return [decode(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [decode(v) for v in value]
    return value


def save_attributes(group: h5py.Group, name: str, data: Sequence[str]) -> None:
    """Keras's ``save_attributes_to_hdf5_group``: split lists whose array exceeds 64,512 bytes."""
    encoded = [s.encode("utf-8") for s in data]
    if not encoded:
        group.attrs[name] = np.asarray([])  # what Keras writes for a layer without weights
        return
    too_long = [s for s in encoded if len(s) > HDF5_OBJECT_HEADER_LIMIT]
    if too_long:
        raise FileFormatError(f"names longer than {HDF5_OBJECT_HEADER_LIMIT} bytes cannot be stored: {too_long[:3]}")
    arr = np.asarray(encoded)
    chunks = 1
    while any(c.nbytes > HDF5_OBJECT_HEADER_LIMIT for c in np.array_split(arr, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[name] = encoded
    else:
        for i, chunk in enumerate(np.array_split(arr, chunks)):
            group.attrs[f"{name}{i}"] = chunk


def _oid(obj):
    """The low-level id of an h5py object (high-level objects and ids both accepted)."""
    return obj.id if isinstance(obj, h5py.HLObject) else obj


def _obj_name(oid) -> str:
    name = h5i.get_name(oid)
    return name.decode("utf-8", "surrogateescape") if name is not None else ""


def _has_attr(oid, name: str) -> bool:
    return h5a.exists(oid, _encode(name)[0])


_VLEN_STR = {h5t.CSET_ASCII: h5py.string_dtype("ascii"), h5t.CSET_UTF8: h5py.string_dtype("utf-8")}
_VLEN_MTYPE = {cset: h5t.py_create(dt) for cset, dt in _VLEN_STR.items()}


def _read_attr(oid, name: str) -> Any:
    """``obj.attrs[name]`` (h5py's ``AttributeManager.__getitem__``) on a low-level id."""
    attr = h5a.open(oid, _encode(name)[0])
    tid = attr.get_type()
    if tid.get_class() not in (h5t.STRING, h5t.INTEGER, h5t.FLOAT):
        # names and versions are strings (an empty name list is a float array); converting other
        # types, e.g. a corrupt variable-length sequence, can crash libhdf5 / h5py outright
        raise ValueError(f"unsupported HDF5 type class {tid.get_class()}")
    if tid.get_class() == h5t.STRING and tid.is_variable_str() and tid.get_cset() in _VLEN_STR:
        # the names and class attributes: variable-length strings, read without the generic
        # dtype round trips (same result: str values, as h5py gives)
        space = attr.get_space()
        kind = space.get_simple_extent_type()
        if kind == h5s.SCALAR or kind == h5s.SIMPLE:
            cset = tid.get_cset()
            arr = np.zeros(space.shape if kind == h5s.SIMPLE else (), dtype=_VLEN_STR[cset])
            attr.read(arr, mtype=_VLEN_MTYPE[cset])
            text = [b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b for b in arr.flat]
            if arr.ndim == 0:
                return text[0]
            return np.array(text, dtype=_VLEN_STR[cset]).reshape(arr.shape)
    shape = attr.shape
    if shape is None:
        return h5py.Empty(attr.dtype)
    dtype = attr.dtype
    htype = h5t.py_create(dtype)
    if dtype.subdtype is not None:
        subdtype, subshape = dtype.subdtype
        shape = attr.shape + subshape
        dtype = subdtype
    arr = np.zeros(shape, dtype=dtype, order="C")
    attr.read(arr, mtype=htype)
    string_info = h5t.check_string_dtype(dtype)
    if string_info and string_info.length is None:
        arr = np.array([b.decode("utf-8", "surrogateescape") for b in arr.flat], dtype=dtype).reshape(arr.shape)
    if arr.ndim == 0:
        return arr[()]
    return arr


def load_attributes(group, name: str, filepath: str) -> Optional[list]:
    """Keras's ``load_attributes_from_hdf5_group``: the list, or None when absent."""
    oid = _oid(group)
    try:
        if _has_attr(oid, name):
            raw = _read_attr(oid, name)
        elif _has_attr(oid, f"{name}0"):
            raw, i = [], 0
            while _has_attr(oid, f"{name}{i}"):
                raw.extend(np.asarray(_read_attr(oid, f"{name}{i}")).tolist())
                i += 1
        else:
            return None
    except (OSError, TypeError, ValueError) as exc:
        raise FileFormatError(
            f"cannot read attribute '{name}' of '{_obj_name(oid)}': {exc}", filepath=filepath
        ) from exc
    if isinstance(raw, np.ndarray) and raw.size == 0:
        return []
    if isinstance(raw, np.ndarray) and raw.dtype.kind not in "SUO":
        raise FileFormatError(f"attribute '{name}' of '{_obj_name(oid)}' is not a list of names", filepath=filepath)
    try:
        items = decode(raw)
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"attribute '{name}' of '{_obj_name(oid)}' is not UTF-8", filepath=filepath) from exc
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise FileFormatError(f"attribute '{name}' of '{_obj_name(oid)}' is not a list of names", filepath=filepath)
    return items


def read_str_attr(obj, name: str, filepath: str) -> Optional[str]:
    oid = _oid(obj)
    if not _has_attr(oid, name):
        return None
    try:
        value = decode(_read_attr(oid, name))
    except (OSError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read attribute '{name}': {exc}", filepath=filepath) from exc
    if not isinstance(value, str):
        raise FileFormatError(f"attribute '{name}' is not a string", filepath=filepath)
    return value


def legal_layer_name(name: str) -> bool:
    """True for a name Keras can give a layer and HDF5 can hold as that layer's group path.

    Keras 2 / tf-keras allow '/' in layer names (DenseNet's ``conv1/conv``, MobileNetV3's
    ``Conv/BatchNorm``) and store them as nested groups; what a path would read as something
    else (an empty, '.' or '..' part: a leading '/', '//', a step up or in place) or NUL is not
    a name Keras makes, and is refused on both reading and writing."""
    if not name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


# --------------------------------------------------------------------------------------- writer
_VLEN_ASCII = h5py.string_dtype("ascii")
_VLEN_UTF8 = h5py.string_dtype("utf-8")


_IMPLICIT = object()


def _encode(name: str) -> tuple:
    """h5py's name encoding: ASCII when it can, else UTF-8 (and the link records which)."""
    try:
        return name.encode("ascii"), h5t.CSET_ASCII
    except UnicodeEncodeError:  # surrogateescape: names read from a file with invalid UTF-8 bytes
        return name.encode("utf-8", "surrogateescape"), h5t.CSET_UTF8


class _Writer:
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
        bname, cset = _encode(name)
        return h5g.create(parent, bname, lcpl=self.lcpl(cset), gcpl=self.gcpl)

    def parent_of(self, group, path: str, made: dict) -> tuple:
        """(group holding ``path``'s last part, that part), making intermediate groups as
        ``create_dataset`` does."""
        bpath, _ = _encode(path)
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
        bname, _ = _encode(name)
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
        plan = _Plan(tuple(shape), itemsize, self.transfer.max_bytes if self.transfer else BLOCK_BYTES)
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


def _write_dataset(group: h5py.Group, path: str, lazy: Lazy) -> None:
    with contextlib.closing(_Writer()) as w:
        w.dataset(group.id, path, lazy, {})


def write_weights_group(
    group: h5py.Group,
    layers: Iterable[LayerRecord],
    top_level: Sequence[Lazy] = (),
    *,
    compression: Optional[str] = None,
    gzip_level: Optional[int] = None,
    progress=None,
) -> None:
    """Write the legacy weights layout into ``group`` (file root or ``model_weights``).

    ``compression``: None, "gzip" (at ``gzip_level``) or "lzf" for every non-scalar dataset.
    ``progress``: called with the byte count of each dataset once it is written."""
    layers = list(layers)
    with Transfer() as transfer, contextlib.closing(_Writer(transfer, compression, gzip_level, progress)) as w:
        save_attributes(group, "layer_names", [layer.name for layer in layers])
        group.attrs["backend"] = BACKEND.encode("utf-8")
        group.attrs["keras_version"] = KERAS_VERSION.encode("utf-8")
        parents: set = set()  # the groups made as parents of nested names ("a" for "a/b")
        for layer in layers:
            if layer.name in parents:
                # tf-keras names such as "Conv" and "Conv/BatchNorm", the inner one written first:
                # the outer layer's group exists and holds the inner one's, so nothing is assumed
                g, made = h5g.open(group.id, _encode(layer.name)[0]), {}
            else:
                g = w.group(group.id, layer.name)
                made = {None: g}
            parts = layer.name.split("/")
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
            names = [f"{layer.name}/{x.name}:0" for x in layer.weights]
            w.names(g, "weight_names", names, fresh=True)
            for name, x in zip(names, layer.weights):
                w.dataset(g, name, x, made)
            if layer.extras:
                w.names(g, EXTRA_ATTR, [e.name for e in layer.extras], fresh=True)
                for e in layer.extras:
                    w.dataset(g, f"{EXTRA_GROUP}/{e.name}", e, made)
            for key, value in layer.attrs.items():
                w.attr(g, key, value, fresh=key not in (EXTRA_ATTR, "weight_names"))
        g = w.group(group.id, TOP_LEVEL)
        names = [x.name for x in top_level]
        w.names(g, "weight_names", names, fresh=True)
        made = {None: g}
        for name, x in zip(names, top_level):
            w.dataset(g, name, x, made)


# --------------------------------------------------------------------------------------- reader
@dataclasses.dataclass
class FileLayer:
    name: str
    weights: list  # of Lazy, in file order
    extras: dict  # torch name -> Lazy
    attrs: dict


_LINK_CLASS = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}


def _resolve(group: h5py.Group, path: str, filepath: str, layer: str) -> h5py.HLObject:
    """Walk ``path`` part by part, refusing links that leave the file or loop."""
    node = _resolve_id(group.id, path, filepath, layer)
    if isinstance(node, h5g.GroupID):
        return h5py.Group(node)
    if isinstance(node, h5d.DatasetID):
        return h5py.Dataset(node)
    return h5py.Datatype(node)


def _resolve_id(group, path: str, filepath: str, layer: str, cache: Optional[dict] = None):
    """:func:`_resolve` on low-level ids (what h5py's ``get(getlink=True)`` and ``[]`` do).

    ``cache`` keeps the groups already walked from ``group`` (by path prefix) for later calls."""
    node = group
    parts = path.split("/")
    if any(p == "" for p in parts):
        raise FileFormatError(f"invalid dataset path '{path}'", filepath=filepath, layer=layer, weight=path)
    first = 0
    if cache:
        for i in range(len(parts) - 1, 0, -1):
            hit = cache.get("/".join(parts[:i]))
            if hit is not None:
                node, first = hit, i
                break
    for i in range(first, len(parts)):
        part = parts[i]
        if not isinstance(node, h5g.GroupID):
            raise FileFormatError(f"'{path}' does not name a dataset", filepath=filepath, layer=layer, weight=path)
        bpart = _encode(part)[0]
        try:
            if part in (".", ".."):  # path syntax rather than link names: h5py's own rules
                link = h5py.Group(node).get(part, getlink=True)
                kind = None if link is None else h5l.TYPE_HARD if isinstance(link, h5py.HardLink) else -1
            else:
                kind = node.links.get_info(bpart).type if node.links.exists(bpart) else None
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"cannot read '{path}': {exc}", filepath=filepath, layer=layer, weight=path) from exc
        if kind is None:
            raise FileFormatError(f"missing dataset '{path}'", filepath=filepath, layer=layer, weight=path)
        if kind == -1:
            raise FileFormatError(f"'{path}' is not a hard link", filepath=filepath, layer=layer, weight=path)
        if kind != h5l.TYPE_HARD:
            if kind not in _LINK_CLASS:
                raise TypeError("Unknown link type")  # what h5py raises
            raise FileFormatError(
                f"'{path}' is a {_LINK_CLASS[kind]}; only hard links are allowed",
                filepath=filepath,
                layer=layer,
                weight=path,
            )
        try:
            node = h5o.open(node, bpart)
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"cannot read '{path}': {exc}", filepath=filepath, layer=layer, weight=path) from exc
        if cache is not None and i < len(parts) - 1:
            cache["/".join(parts[: i + 1])] = node
    return node


def _dataset_lazy(dset, name: str, filepath: str, layer: str, file=None, raw: Optional[_RawFile] = None) -> Lazy:
    """A lazy tensor for a dataset: its metadata checked now, its data read on demand.

    With ``file`` (the open file's id) the dataset is let go and opened again by its path for
    each read: an open HDF5 dataset holds some 12 KB, which for thousands of small weights
    outweighs the weights themselves. With ``raw`` (the file's bytes), contiguous unfiltered
    data is read straight from the file at its checked offset, without HDF5's read path."""
    dset = _oid(dset)
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
    if marker is None and tdtype in _BLOCK_DTYPES and dtype.isnative:
        # a type numpy and torch share: HDF5 (or a plain read) fills torch memory directly,
        # chunked and compressed data included
        offset = None
        if raw is not None and layout == h5d.CONTIGUOUS and dcpl.get_nfilters() == 0:
            offset = raw.offset_of(dset, shape, dtype, filepath, layer, name)
        rows = _Rows(handle, shape, tdtype, filepath, layer, name, raw if offset is not None else None, offset)

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


class _RawFile:
    """The bytes of an open HDF5 file, for datasets stored plainly (contiguous, no filters, no
    external storage, file type = memory type): read with ``os.preadv`` at the offset HDF5
    reports, which skips HDF5's per-read overhead. Offsets are checked against the file size
    before any read, and the reads use HDF5's own descriptor of the file."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    @classmethod
    def of(cls, file: h5py.File) -> Optional[_RawFile]:
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
    after it are whole (the slabs of :class:`_tensors._Plan`)."""
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


class _Rows:
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
        raw: Optional[_RawFile] = None,
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


class WeightsReader:
    """Read access to a legacy-HDF5 weights group (weights-only file or full-model file)."""

    def __init__(self, filepath: os.PathLike | str) -> None:
        self.filepath = os.fspath(filepath)
        try:
            with open(self.filepath, "rb") as fh:
                head = fh.read(8)
        except IsADirectoryError as exc:
            raise FileFormatError("is a directory, not a Keras HDF5 file", filepath=self.filepath) from exc
        if head != HDF5_SIGNATURE:
            # HDF5 allows a user block before the superblock; h5py copes with it
            if not h5py.is_hdf5(self.filepath):
                hint = " (it is a ZIP archive: a Keras 3 .keras file?)" if head[:4] == b"PK\x03\x04" else ""
                raise FileFormatError(f"not an HDF5 file{hint}", filepath=self.filepath)
        try:
            self.file = h5py.File(self.filepath, "r")
        except (OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(
                f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=self.filepath
            ) from exc
        try:
            self._raw = _RawFile.of(self.file) if head == HDF5_SIGNATURE else None
            self.group = self._find_weights_group()
            self.keras_version = read_str_attr(self.group, "keras_version", self.filepath) or "1"
            self.backend = read_str_attr(self.group, "backend", self.filepath)
            names = load_attributes(self.group, "layer_names", self.filepath)
            if names is None:
                raise FileFormatError("weights group has no 'layer_names' attribute", filepath=self.filepath)
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise FileFormatError(f"duplicate layer names {dup}", filepath=self.filepath)
            self.layer_names: list[str] = names
        except BaseException:
            self.file.close()
            raise

    def _find_weights_group(self) -> h5py.Group:
        root = self.file
        try:
            if "layer_names" in root.attrs or "layer_names0" in root.attrs:
                return root
            if "model_weights" in root:
                group = _resolve(root, "model_weights", self.filepath, "model_weights")
                if isinstance(group, h5py.Group):
                    return group
            if "layers" in root and "vars" in root:
                raise FileFormatError(
                    "this is a Keras 3 '.weights.h5' (saving_lib) file, not the legacy HDF5 layout",
                    filepath=self.filepath,
                )
        except (OSError, RuntimeError) as exc:
            raise FileFormatError(f"corrupt HDF5 structure: {exc}", filepath=self.filepath) from exc
        raise FileFormatError(
            "not a Keras weights file: no 'layer_names' attribute and no 'model_weights' group", filepath=self.filepath
        )

    @property
    def has_model_config(self) -> bool:
        return "model_config" in self.file.attrs

    def layer(self, name: str) -> FileLayer:
        """The named layer group, with lazily read weights."""
        # HDF5 reads a name up to its first NUL (as Keras's f[name] does): that is the name checked
        if name and not legal_layer_name(name.split("\x00", 1)[0]):
            raise FileFormatError(f"invalid layer name {name[:200]!r} (an empty, '.' or '..' part)",
                                  filepath=self.filepath, layer=name)  # fmt: skip
        group = _resolve_id(self.group.id, name, self.filepath, name) if name else self.group.id
        if not isinstance(group, h5g.GroupID):
            raise FileFormatError("layer entry is not a group", filepath=self.filepath, layer=name)
        weight_names = load_attributes(group, "weight_names", self.filepath)
        if weight_names is None:
            raise FileFormatError("layer group has no 'weight_names' attribute", filepath=self.filepath, layer=name)
        walked: dict = {}
        fid, raw = self.file.id, self._raw
        weights = [
            _dataset_lazy(_resolve_id(group, w, self.filepath, name, walked), w, self.filepath, name, fid, raw)
            for w in weight_names
        ]
        extras = {}
        for e in load_attributes(group, EXTRA_ATTR, self.filepath) or []:
            path = f"{EXTRA_GROUP}/{e}"
            dset = _resolve_id(group, path, self.filepath, name, walked)
            extras[e] = _dataset_lazy(dset, e, self.filepath, name, fid, raw)
        attrs = {}
        for key in ("torch_class", "keras_class"):
            value = read_str_attr(group, key, self.filepath)
            if value is not None:
                attrs[key] = value
        return FileLayer(name, weights, extras, attrs)

    def top_level(self) -> Optional[FileLayer]:
        if TOP_LEVEL not in self.group or TOP_LEVEL in self.layer_names:
            return None
        layer = self.layer(TOP_LEVEL)
        return layer

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> WeightsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
