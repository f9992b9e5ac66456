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

import dataclasses
import os
from typing import Any, Iterable, Optional, Sequence

import h5py
import numpy as np
import torch
from h5py import h5a, h5d, h5g, h5p, h5s, h5t

from ._tensors import _BLOCK_DTYPES, Lazy, from_numpy, row_blocks, to_numpy, torch_dtype_of
from .errors import FileFormatError

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


def load_attributes(group: h5py.Group, name: str, filepath: str) -> Optional[list]:
    """Keras's ``load_attributes_from_hdf5_group``: the list, or None when absent."""
    try:
        if name in group.attrs:
            raw = group.attrs[name]
        elif f"{name}0" in group.attrs:
            raw, i = [], 0
            while f"{name}{i}" in group.attrs:
                raw.extend(np.asarray(group.attrs[f"{name}{i}"]).tolist())
                i += 1
        else:
            return None
    except (OSError, TypeError, ValueError) as exc:
        raise FileFormatError(f"cannot read attribute '{name}' of '{group.name}': {exc}", filepath=filepath) from exc
    if isinstance(raw, np.ndarray) and raw.size == 0:
        return []
    if isinstance(raw, np.ndarray) and raw.dtype.kind not in "SUO":
        raise FileFormatError(f"attribute '{name}' of '{group.name}' is not a list of names", filepath=filepath)
    items = decode(raw)
    if isinstance(items, str):
        items = [items]
    if not all(isinstance(x, str) for x in items):
        raise FileFormatError(f"attribute '{name}' of '{group.name}' is not a list of names", filepath=filepath)
    return items


def read_str_attr(obj: h5py.HLObject, name: str, filepath: str) -> Optional[str]:
    if name not in obj.attrs:
        return None
    try:
        value = decode(obj.attrs[name])
    except (OSError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read attribute '{name}': {exc}", filepath=filepath) from exc
    if not isinstance(value, str):
        raise FileFormatError(f"attribute '{name}' is not a string", filepath=filepath)
    return value


# --------------------------------------------------------------------------------------- writer
_VLEN_ASCII = h5py.string_dtype("ascii")
_VLEN_UTF8 = h5py.string_dtype("utf-8")


def _encode(name: str) -> tuple:
    """h5py's name encoding: ASCII when it can, else UTF-8 (and the link records which)."""
    try:
        return name.encode("ascii"), h5t.CSET_ASCII
    except UnicodeEncodeError:
        return name.encode("utf-8"), h5t.CSET_UTF8


class _Writer:
    """The groups, attributes and datasets of the layout, made with h5py's low-level API.

    What it makes is what h5py's high-level calls make (``create_group``, ``create_dataset``
    with an intermediate group, ``attrs[name] = value``): the same datatypes, dataspaces and
    property lists, without the per-call overhead that dominates files with many small layers.
    """

    def __init__(self) -> None:
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
        if gid is None:
            if group.links.exists(parent) if b"/" not in parent else _exists(group, parent):
                gid = h5py.Group(group).require_group(parent).id
            else:
                gid = h5g.create(group, parent, lcpl=self.lcpl(h5t.CSET_ASCII), gcpl=self.gcpl)
            made[parent] = gid
        return gid, name

    def attr(self, obj, name: str, value) -> None:
        """``obj.attrs[name] = value`` for a str or a list of bytes (others: h5py's own call)."""
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
        if h5a.exists(obj, bname):
            h5a.delete(obj, bname)
        attr = h5a.create(obj, bname, self.htype(dtype), space)
        try:
            attr.write(data, mtype=self.htype(dtype, logical=False))
        except BaseException:
            attr.close()
            h5a.delete(obj, bname)
            raise
        attr.close()

    def names(self, obj, name: str, data: Sequence[str]) -> None:
        """:func:`save_attributes` on a low-level object."""
        encoded = [s.encode("utf-8") for s in data]
        if encoded and max(map(len, encoded)) * len(encoded) <= HDF5_OBJECT_HEADER_LIMIT:
            self.attr(obj, name, encoded)  # fits in one attribute whatever numpy pads it to
        else:
            save_attributes(h5py.Group(obj), name, data)

    def dataset(self, group, path: str, lazy: Lazy, made: dict) -> None:
        """Write one lazy tensor, block by block when it is a view of a CPU tensor."""
        parent, name = self.parent_of(group, path, made)
        dset = None
        for start, block in row_blocks(lazy):
            array, marker = to_numpy(block)
            if dset is None:
                whole = tuple(array.shape) == lazy.shape
                shape = array.shape if whole else lazy.shape
                dset = h5d.create(
                    parent, name, self.htype(array.dtype), h5s.create_simple(tuple(shape)), dcpl=self.dcpl
                )
                if marker is not None:
                    self.attr(dset, DTYPE_ATTR, marker)
            array = np.asarray(array, order="C")
            if tuple(array.shape) == tuple(shape):
                dset.write(h5s.ALL, h5s.ALL, array)
            else:
                fspace = dset.get_space()
                fspace.select_hyperslab((start,) + (0,) * (array.ndim - 1), array.shape)
                dset.write(h5s.create_simple(array.shape), fspace, array)


def _exists(group, path: bytes) -> bool:
    try:
        return h5py.Group(group).__contains__(path)
    except (KeyError, ValueError):
        return False


def _write_dataset(group: h5py.Group, path: str, lazy: Lazy) -> None:
    _Writer().dataset(group.id, path, lazy, {})


def write_weights_group(group: h5py.Group, layers: Iterable[LayerRecord], top_level: Sequence[Lazy] = ()) -> None:
    """Write the legacy weights layout into ``group`` (file root or ``model_weights``)."""
    layers = list(layers)
    w = _Writer()
    save_attributes(group, "layer_names", [layer.name for layer in layers])
    group.attrs["backend"] = BACKEND.encode("utf-8")
    group.attrs["keras_version"] = KERAS_VERSION.encode("utf-8")
    for layer in layers:
        g = w.group(group.id, layer.name)
        made: dict = {}
        names = [f"{layer.name}/{x.name}:0" for x in layer.weights]
        w.names(g, "weight_names", names)
        for name, x in zip(names, layer.weights):
            w.dataset(g, name, x, made)
        if layer.extras:
            w.names(g, EXTRA_ATTR, [e.name for e in layer.extras])
            for e in layer.extras:
                w.dataset(g, f"{EXTRA_GROUP}/{e.name}", e, made)
        for key, value in layer.attrs.items():
            w.attr(g, key, value)
    g = w.group(group.id, TOP_LEVEL)
    names = [x.name for x in top_level]
    w.names(g, "weight_names", names)
    made = {}
    for name, x in zip(names, top_level):
        w.dataset(g, name, x, made)


# --------------------------------------------------------------------------------------- reader
@dataclasses.dataclass
class FileLayer:
    name: str
    weights: list  # of Lazy, in file order
    extras: dict  # torch name -> Lazy
    attrs: dict


def _resolve(group: h5py.Group, path: str, filepath: str, layer: str) -> h5py.HLObject:
    """Walk ``path`` part by part, refusing links that leave the file or loop."""
    node = group
    parts = path.split("/")
    if any(p == "" for p in parts):
        raise FileFormatError(f"invalid dataset path '{path}'", filepath=filepath, layer=layer, weight=path)
    for part in parts:
        if not isinstance(node, h5py.Group):
            raise FileFormatError(f"'{path}' does not name a dataset", filepath=filepath, layer=layer, weight=path)
        try:
            link = node.get(part, getlink=True)
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"cannot read '{path}': {exc}", filepath=filepath, layer=layer, weight=path) from exc
        if link is None:
            raise FileFormatError(f"missing dataset '{path}'", filepath=filepath, layer=layer, weight=path)
        if not isinstance(link, h5py.HardLink):
            raise FileFormatError(
                f"'{path}' is a {type(link).__name__}; only hard links are allowed",
                filepath=filepath,
                layer=layer,
                weight=path,
            )
        try:
            node = node[part]
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"cannot read '{path}': {exc}", filepath=filepath, layer=layer, weight=path) from exc
    return node


def _dataset_lazy(dset: h5py.Dataset, name: str, filepath: str, layer: str) -> Lazy:
    if not isinstance(dset, h5py.Dataset):
        raise FileFormatError("not a dataset", filepath=filepath, layer=layer, weight=name)
    try:
        dtype = dset.dtype
        shape = dset.shape
        marker = read_str_attr(dset, DTYPE_ATTR, filepath)
        is_external = dset.external is not None or dset.is_virtual
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

    def read():
        try:
            array = dset[()]
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise FileFormatError(f"cannot read data: {exc}", filepath=filepath, layer=layer, weight=name) from exc
        return from_numpy(np.asarray(array), marker)

    rows = None
    if marker is None and tdtype in _BLOCK_DTYPES and dtype.isnative and _plain_layout(dset):
        rows = _Rows(dset.id, tuple(shape), tdtype, filepath, layer, name)
    return Lazy(name, shape, tdtype, read, root=rows)


def _plain_layout(dset: h5py.Dataset) -> bool:
    """Contiguous or compact storage without filters: row ranges are cheap to read."""
    try:
        dcpl = dset.id.get_create_plist()
        return dcpl.get_layout() in (h5d.CONTIGUOUS, h5d.COMPACT) and dcpl.get_nfilters() == 0
    except (OSError, RuntimeError, ValueError):
        return False


class _Rows:
    """A dataset as a row source for :meth:`Lazy.read_into`: rows ``[start, stop)`` read by HDF5
    straight into the caller's (CPU, contiguous) tensor."""

    __slots__ = ("dset", "shape", "dtype", "filepath", "layer", "name")

    def __init__(self, dset, shape: tuple, dtype: torch.dtype, filepath: str, layer: str, name: str) -> None:
        self.dset, self.shape, self.dtype = dset, shape, dtype
        self.filepath, self.layer, self.name = filepath, layer, name

    def read_rows(self, start: int, stop: int, out: torch.Tensor) -> None:
        array = out.detach().numpy()
        try:
            if not self.shape or (start == 0 and stop == self.shape[0]):
                self.dset.read(h5s.ALL, h5s.ALL, array)
            else:
                fspace = self.dset.get_space()
                fspace.select_hyperslab((start,) + (0,) * (len(self.shape) - 1), array.shape)
                self.dset.read(h5s.create_simple(array.shape), fspace, array)
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
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
        group = _resolve(self.group, name, self.filepath, name) if name else self.group
        if not isinstance(group, h5py.Group):
            raise FileFormatError("layer entry is not a group", filepath=self.filepath, layer=name)
        weight_names = load_attributes(group, "weight_names", self.filepath)
        if weight_names is None:
            raise FileFormatError("layer group has no 'weight_names' attribute", filepath=self.filepath, layer=name)
        weights = [_dataset_lazy(_resolve(group, w, self.filepath, name), w, self.filepath, name) for w in weight_names]
        extras = {}
        for e in load_attributes(group, EXTRA_ATTR, self.filepath) or []:
            path = f"{EXTRA_GROUP}/{e}"
            extras[e] = _dataset_lazy(_resolve(group, path, self.filepath, name), e, self.filepath, name)
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
