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

from ._tensors import Lazy, from_numpy, to_numpy, torch_dtype_of
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
def _write_dataset(group: h5py.Group, path: str, lazy: Lazy) -> None:
    array, marker = to_numpy(lazy.read())
    dset = group.create_dataset(path, data=array)
    if marker is not None:
        dset.attrs[DTYPE_ATTR] = marker


def write_weights_group(group: h5py.Group, layers: Iterable[LayerRecord], top_level: Sequence[Lazy] = ()) -> None:
    """Write the legacy weights layout into ``group`` (file root or ``model_weights``)."""
    layers = list(layers)
    save_attributes(group, "layer_names", [layer.name for layer in layers])
    group.attrs["backend"] = BACKEND.encode("utf-8")
    group.attrs["keras_version"] = KERAS_VERSION.encode("utf-8")
    for layer in layers:
        g = group.create_group(layer.name)
        names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
        save_attributes(g, "weight_names", names)
        for name, w in zip(names, layer.weights):
            _write_dataset(g, name, w)
        if layer.extras:
            save_attributes(g, EXTRA_ATTR, [e.name for e in layer.extras])
            for e in layer.extras:
                _write_dataset(g, f"{EXTRA_GROUP}/{e.name}", e)
        for key, value in layer.attrs.items():
            g.attrs[key] = value
    g = group.create_group(TOP_LEVEL)
    names = [w.name for w in top_level]
    save_attributes(g, "weight_names", names)
    for name, w in zip(names, top_level):
        _write_dataset(g, name, w)


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

    return Lazy(name, shape, tdtype, read)


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
