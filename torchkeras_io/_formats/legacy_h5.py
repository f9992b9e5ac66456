"""The Keras legacy-HDF5 layout: the weights group and the full-model attributes.

Layout (docs/keras_formats.md §2–5)::

    <weights group>   @layer_names (chunked past 64 KB) @backend @keras_version
      <layer>/        @weight_names (chunked)  datasets at <layer>/<weight name>
        __torch__/    torch-only state Keras has no slot for, listed in @torch_extra_names
      top_level_model_weights/   the model's own variables

The weights group is the file root for ``save_weights`` files and ``/model_weights`` for
full-model files (``model.save("x.h5")``), whose root also holds the model's JSON attributes
(:func:`model_file_info`). Nothing here knows about layers; the HDF5 engine is :mod:`.hdf5`.
Layers are written from and read into plain values: records with ``name``, ``weights`` (lazy
tensors), ``extras`` (``{torch name: lazy tensor}``) and ``attrs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterable, Optional, Sequence

import h5py
from h5py import h5g

from torchkeras_io._formats.hdf5 import (
    encode_name,
    load_attributes,
    read_str_attr,
    resolve,
    resolve_id,
    save_attributes,
)
from torchkeras_io._formats.hdf5_io import RawFile, Writer, dataset_lazy
from torchkeras_io._tensors import Lazy, Transfer
from torchkeras_io.errors import FileFormatError

KERAS_VERSION = "2.15.0"  # the Keras dialect our files follow; any non-"1" version works for readers
BACKEND = "torch"  # a weights file's @backend
BACKEND_TF = "tensorflow"  # a full-model file's @backend: what tf-keras and Keras 3 expect there
TOP_LEVEL = "top_level_model_weights"
MODEL_WEIGHTS = "model_weights"
EXTRA_GROUP = "__torch__"
EXTRA_ATTR = "torch_extra_names"
LAYER_ATTRS = ("torch_class", "keras_class")  # what our writer records of each layer's origin
MAX_CONFIG_BYTES = 256 * 1024 * 1024


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
def write_weights_group(
    group: h5py.Group,
    layers: Iterable,
    top_level: Sequence[Lazy] = (),
    *,
    compression: Optional[str] = None,
    gzip_level: Optional[int] = None,
    progress=None,
) -> None:
    """Write the legacy weights layout into ``group`` (file root or ``model_weights``).

    ``layers``: records with ``name``, ``weights``, ``extras`` (``{torch name: tensor}``) and ``attrs``
    (string attributes of the layer group), in ``layer_names`` order.
    ``compression``: None, "gzip" (at ``gzip_level``) or "lzf" for every non-scalar dataset.
    ``progress``: called with the byte count of each dataset once it is written."""
    layers = list(layers)
    with Transfer() as transfer, contextlib.closing(Writer(transfer, compression, gzip_level, progress)) as w:
        save_attributes(group, "layer_names", [layer.name for layer in layers])
        group.attrs["backend"] = BACKEND.encode("utf-8")
        group.attrs["keras_version"] = KERAS_VERSION.encode("utf-8")
        parents: set = set()  # the groups made as parents of nested names ("a" for "a/b")
        for layer in layers:
            if layer.name in parents:
                # tf-keras names such as "Conv" and "Conv/BatchNorm", the inner one written first:
                # the outer layer's group exists and holds the inner one's, so nothing is assumed
                g, made = h5g.open(group.id, encode_name(layer.name)[0]), {}
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
                w.names(g, EXTRA_ATTR, list(layer.extras), fresh=True)
                for name, e in layer.extras.items():
                    w.dataset(g, f"{EXTRA_GROUP}/{name}", e, made)
            for key, value in layer.attrs.items():
                w.attr(g, key, value, fresh=key not in (EXTRA_ATTR, "weight_names"))
        g = w.group(group.id, TOP_LEVEL)
        names = [x.name for x in top_level]
        w.names(g, "weight_names", names, fresh=True)
        made = {None: g}
        for name, x in zip(names, top_level):
            w.dataset(g, name, x, made)


# --------------------------------------------------------------------------------------- reader
def find_weights_group(f: h5py.File, filepath: str) -> h5py.Group:
    """The weights group: the root of a weights file, ``model_weights`` of a full-model file."""
    try:
        if "layer_names" in f.attrs or "layer_names0" in f.attrs:
            return f
        if MODEL_WEIGHTS in f:
            group = resolve(f, MODEL_WEIGHTS, filepath, MODEL_WEIGHTS)
            if isinstance(group, h5py.Group):
                return group
        if "layers" in f and "vars" in f:
            raise FileFormatError(
                "this is a Keras 3 '.weights.h5' (saving_lib) file, not the legacy HDF5 layout", filepath=filepath
            )
    except (OSError, RuntimeError) as exc:
        raise FileFormatError(f"corrupt HDF5 structure: {exc}", filepath=filepath) from exc
    raise FileFormatError(
        "not a Keras weights file: no 'layer_names' attribute and no 'model_weights' group", filepath=filepath
    )


def layer_names(group: h5py.Group, filepath: str) -> list:
    """The weights group's ``layer_names``, checked: present and without duplicates."""
    names = load_attributes(group, "layer_names", filepath)
    if names is None:
        raise FileFormatError("weights group has no 'layer_names' attribute", filepath=filepath)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FileFormatError(f"duplicate layer names {dup}", filepath=filepath)
    return names


def read_layer(file: h5py.File, group: h5py.Group, name: str, filepath: str, raw: Optional[RawFile] = None) -> tuple:
    """(weights in file order, ``{torch name: extra}``, attributes) of the layer group ``name`` of the
    weights ``group`` in ``file``, every tensor lazy. ``raw``: the file's bytes, for plain datasets
    (see :func:`.hdf5.dataset_lazy`)."""
    # HDF5 reads a name up to its first NUL (as Keras's f[name] does): that is the name checked
    if name and not legal_layer_name(name.split("\x00", 1)[0]):
        raise FileFormatError(f"invalid layer name {name[:200]!r} (an empty, '.' or '..' part)",
                              filepath=filepath, layer=name)  # fmt: skip
    gid = resolve_id(group.id, name, filepath, name) if name else group.id
    if not isinstance(gid, h5g.GroupID):
        raise FileFormatError("layer entry is not a group", filepath=filepath, layer=name)
    weight_names = load_attributes(gid, "weight_names", filepath)
    if weight_names is None:
        raise FileFormatError("layer group has no 'weight_names' attribute", filepath=filepath, layer=name)
    walked: dict = {}
    fid = file.id
    weights = [
        dataset_lazy(resolve_id(gid, w, filepath, name, walked), w, filepath, name, fid, raw) for w in weight_names
    ]
    extras = {}
    for e in load_attributes(gid, EXTRA_ATTR, filepath) or []:
        dset = resolve_id(gid, f"{EXTRA_GROUP}/{e}", filepath, name, walked)
        extras[e] = dataset_lazy(dset, e, filepath, name, fid, raw)
    attrs = {}
    for key in LAYER_ATTRS:
        value = read_str_attr(gid, key, filepath)
        if value is not None:
            attrs[key] = value
    return weights, extras, attrs


# ------------------------------------------------------------------------------ full-model file
@dataclasses.dataclass
class ModelFileInfo:
    """The JSON attributes (text) and writer version at the root of a full-model file."""

    model_config: Optional[str]
    training_config: Optional[str]
    torch_config: Optional[str]
    keras_version: Optional[str]
    backend: Optional[str]


def model_file_info(f: h5py.File, filepath: str) -> ModelFileInfo:
    """The model and training configs (JSON text) and writer version of an open full-model file."""
    return ModelFileInfo(
        _config_attr(f, "model_config", filepath),
        _config_attr(f, "training_config", filepath),
        _config_attr(f, "torch_config", filepath),
        read_str_attr(f, "keras_version", filepath),
        read_str_attr(f, "backend", filepath),
    )


def _config_attr(f: h5py.File, name: str, filepath: str) -> Optional[str]:
    if name not in f.attrs:
        return None
    try:
        info = f.attrs.get_id(name)
        if info.get_storage_size() > MAX_CONFIG_BYTES:
            raise FileFormatError(f"attribute '{name}' is larger than {MAX_CONFIG_BYTES} bytes", filepath=filepath)
    except (KeyError, AttributeError):
        pass
    return read_str_attr(f, name, filepath)
