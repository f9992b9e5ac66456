"""The HDF5 engine under every Keras HDF5 layout (legacy weights, full model, Keras 3 store).

Nothing here knows a layout: it opens files safely, maps h5py's own errors on a corrupt file to
:class:`FileFormatError`, reads and writes attributes as Keras does, and resolves paths through
hard links only. Block I/O (the :class:`~.hdf5_io.Writer`, datasets read as lazy tensors) is in
:mod:`.hdf5_io`. The layouts are in :mod:`.legacy_h5` and :mod:`.keras3_store` (see
docs/keras_formats.md).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional, Sequence

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5i, h5l, h5o, h5s, h5t

from torchkeras_io.errors import FileFormatError, TorchKerasIOError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
HDF5_OBJECT_HEADER_LIMIT = 64512
DTYPE_ATTR = "torch_dtype"  # a dataset's torch dtype where numpy has none (bfloat16)


# ------------------------------------------------------------------------------- opening, errors
def open_readonly(filepath: os.PathLike | str) -> h5py.File:
    """``filepath`` opened read-only by h5py, or a :class:`FileFormatError` naming the file.

    The first bytes are checked before h5py sees the file, so that a ZIP archive or a directory
    gets a plain answer rather than HDF5's error stack (HDF5 allows a user block before the
    superblock: h5py is asked when the signature is not at the start). A missing file raises
    :class:`FileNotFoundError`, as ``open`` does."""
    filepath = os.fspath(filepath)
    try:
        with open(filepath, "rb") as fh:
            head = fh.read(8)
    except IsADirectoryError as exc:
        raise FileFormatError("is a directory, not a Keras HDF5 file", filepath=filepath) from exc
    if head != HDF5_SIGNATURE and not h5py.is_hdf5(filepath):
        hint = " (it is a ZIP archive: a Keras 3 .keras file?)" if head[:4] == ZIP_SIGNATURE else ""
        raise FileFormatError(f"not an HDF5 file{hint}", filepath=filepath)
    try:
        return h5py.File(filepath, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=filepath) from exc


@contextlib.contextmanager
def h5_errors(filepath: os.PathLike | str) -> Iterator[None]:
    """Errors that h5py itself raises on a corrupt file (its RuntimeError, KeyError, OSError...
    out of HDF5's decoders, wherever the reading code touched the file) become a FileFormatError
    naming the file; errors raised by anything else pass through unchanged."""
    try:
        yield
    except (TorchKerasIOError, FileNotFoundError, PermissionError):
        raise
    except (RuntimeError, KeyError, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        origin = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
        if not (origin == "h5py" or origin.startswith("h5py.")):
            raise
        raise FileFormatError(f"corrupt HDF5 file ({type(exc).__name__}: {exc})", filepath=filepath) from exc


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


def object_id(obj):
    """The low-level id of an h5py object (high-level objects and ids both accepted)."""
    return obj.id if isinstance(obj, h5py.HLObject) else obj


def _obj_name(oid) -> str:
    name = h5i.get_name(oid)
    return name.decode("utf-8", "surrogateescape") if name is not None else ""


def _has_attr(oid, name: str) -> bool:
    return h5a.exists(oid, encode_name(name)[0])


_VLEN_STR = {h5t.CSET_ASCII: h5py.string_dtype("ascii"), h5t.CSET_UTF8: h5py.string_dtype("utf-8")}
_VLEN_MTYPE = {cset: h5t.py_create(dt) for cset, dt in _VLEN_STR.items()}


def _read_attr(oid, name: str) -> Any:
    """``obj.attrs[name]`` (h5py's ``AttributeManager.__getitem__``) on a low-level id."""
    attr = h5a.open(oid, encode_name(name)[0])
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
    oid = object_id(group)
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
    oid = object_id(obj)
    if not _has_attr(oid, name):
        return None
    try:
        value = decode(_read_attr(oid, name))
    except (OSError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read attribute '{name}': {exc}", filepath=filepath) from exc
    if not isinstance(value, str):
        raise FileFormatError(f"attribute '{name}' is not a string", filepath=filepath)
    return value


# ------------------------------------------------------------------------------------------ names
def encode_name(name: str) -> tuple:
    """h5py's name encoding: ASCII when it can, else UTF-8 (and the link records which)."""
    try:
        return name.encode("ascii"), h5t.CSET_ASCII
    except UnicodeEncodeError:  # surrogateescape: names read from a file with invalid UTF-8 bytes
        return name.encode("utf-8", "surrogateescape"), h5t.CSET_UTF8


# ---------------------------------------------------------------------------------- paths, links
_LINK_CLASS = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}


def resolve(group: h5py.Group, path: str, filepath: str, layer: str) -> h5py.HLObject:
    """Walk ``path`` part by part, refusing links that leave the file or loop."""
    node = resolve_id(group.id, path, filepath, layer)
    if isinstance(node, h5g.GroupID):
        return h5py.Group(node)
    if isinstance(node, h5d.DatasetID):
        return h5py.Dataset(node)
    return h5py.Datatype(node)


def resolve_id(group, path: str, filepath: str, layer: str, cache: Optional[dict] = None):
    """:func:`resolve` on low-level ids (what h5py's ``get(getlink=True)`` and ``[]`` do).

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
        bpart = encode_name(part)[0]
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
