"""What a file holds, as the commands show and compare it: layers of named weights, read lazily.

The bytes are read by the library's own readers; this module only turns what they give into
:class:`Contents`, which ``inspect`` prints, ``diff`` pairs and ``convert`` writes out, and
:func:`read_contents` is the one place that opens a file. What it uses of ``_formats`` and
``_checkpoint``: :func:`~torchkeras_io._formats.detect.detect` for the kind;
:func:`~torchkeras_io._checkpoint.reader.open_checkpoint` for every Keras format (``layer_names``,
``layer()``, ``top_level()``, the configs; a Keras 3 reader's ``store``, ``files`` and
``metadata``, since a store is listed object by object, as Keras keeps it, and a ``.keras``
archive without ``model.weights.h5`` is shown from its config alone (``weights_optional``); a
legacy reader's ``attributes()``, ``group`` and ``file``); :mod:`~torchkeras_io._formats.flat`
for safetensors and torch files.

One thing still reads below the protocol: the legacy optimizer state is sized from its datasets'
headers, every dataset of the group counted, listed in its ``weight_names`` or not (a
``TrainingRecord`` has the listed ones only, and gives no shape or dtype before they are read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable, Optional

import h5py
import numpy as np
import torch

from torchkeras_io._checkpoint.reader import CheckpointReader, open_checkpoint
from torchkeras_io._formats import flat
from torchkeras_io._formats.detect import Format, detect
from torchkeras_io._formats.hdf5 import read_str_attr, resolve
from torchkeras_io._formats.hdf5_io import dataset_lazy
from torchkeras_io._formats.keras3_store import EXTRAS
from torchkeras_io._formats.keras_archive import WEIGHTS
from torchkeras_io._formats.legacy_h5 import EXTRA_GROUP
from torchkeras_io._formats.training_h5 import KERAS3_OPTIMIZER, OPT_GROUP
from torchkeras_io._keras.config import config_layers, entry_name
from torchkeras_io._tensors import Lazy
from torchkeras_io.cli.common import UsageError
from torchkeras_io.errors import FileFormatError

#: every kind :func:`detect` tells apart, by the name the commands print and ``--json`` gives
FORMATS = {
    Format.LEGACY_MODEL.value: "Keras legacy HDF5, full model (model.save('x.h5'))",
    Format.LEGACY_WEIGHTS.value: "Keras legacy HDF5, weights only (model.save_weights('x.h5'))",
    Format.KERAS3_WEIGHTS.value: "Keras 3 weights (model.save_weights('x.weights.h5'))",
    Format.KERAS.value: "Keras 3 model archive (model.save('x.keras'))",
    Format.SHARDED.value: "Keras 3 sharded weights (model.save_weights('x.weights.json', max_shard_size=...))",
    Format.SAFETENSORS.value: "safetensors",
    Format.TORCH.value: "PyTorch state_dict (torch.save, zip format)",
}
V3_STORES = (Format.KERAS3_WEIGHTS.value, Format.SHARDED.value, Format.KERAS.value)  # variables by position
FLAT = (Format.SAFETENSORS.value, Format.TORCH.value)


@dataclasses.dataclass
class Weight:
    name: str
    shape: tuple
    dtype: str
    nbytes: int
    read: Callable[[], torch.Tensor]

    def as_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}


@dataclasses.dataclass
class Layer:
    name: str
    class_name: Optional[str]
    weights: list
    keras_name: Optional[str] = None  # Keras 3 files: the layer's own name when the path differs


@dataclasses.dataclass
class Contents:
    """What one file holds, read without knowing about layers."""

    path: str
    format: str
    layers: list
    keras_version: Optional[str] = None
    backend: Optional[str] = None
    model: Optional[dict] = None  # {"class_name", "name"} when the file has an architecture
    model_config: Optional[dict] = None
    training_config: Optional[dict] = None
    optimizer: Optional[dict] = None  # {"class_name", "variables", "nbytes", "iterations"}
    names: Optional[str] = None  # flat files: "keras" or "torch"
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def has_architecture(self) -> bool:
        return self.model is not None

    def weight_count(self) -> int:
        return sum(len(layer.weights) for layer in self.layers)


def _weight(lazy: Lazy, name: Optional[str] = None) -> Weight:
    dtype = str(lazy.dtype).removeprefix("torch.")
    nbytes = int(np.prod(lazy.shape, dtype=np.int64)) * torch.empty((), dtype=lazy.dtype).element_size()
    return Weight(name or lazy.name, lazy.shape, dtype, nbytes, lazy.read)


def detect_format(path: str) -> str:
    """The file's format from its first bytes: a key of :data:`FORMATS`."""
    return detect(path).value


def read_contents(path: str, stack: contextlib.ExitStack) -> Contents:
    """Open ``path`` (kept open by ``stack`` until the weights are read) and list what it holds."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt in FLAT:
        try:
            file = stack.enter_context(flat.read_safetensors(path) if fmt == "safetensors" else flat.read_torch(path))
        except ImportError as exc:  # the optional safetensors package
            raise UsageError(str(exc)) from exc
        return _flat_contents(path, fmt, file)
    reader = stack.enter_context(open_checkpoint(path, weights_optional=True))
    if fmt == "keras" and not reader.files:  # no model.weights.h5: the model is all there is to show
        out = Contents(path, fmt, [], model_config=reader.model_config)
        out.extra["weights"] = f"no {WEIGHTS} member (npz or sharded weights are not read)"
        out.keras_version = reader.metadata.get("keras_version")
        return _with_config(out)
    return _store_contents(reader, fmt) if reader.store is not None else _legacy_contents(reader, fmt)


def _json(text: Optional[str], what: str, path: str) -> Optional[dict]:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FileFormatError(f"'{what}' is not valid JSON: {exc}", filepath=path) from exc


def _class_names(config) -> dict:
    """``{layer name: class name}`` for the model and every layer of its config, nested models' and
    wrapped layers' included (the first of a name wins)."""
    out: dict = {}
    if not isinstance(config, dict):
        return out
    for entry in [config, *config_layers(config, nested=True)]:
        name, cls = entry_name(entry), entry.get("class_name")
        if isinstance(name, str) and isinstance(cls, str):
            out.setdefault(name, cls)
    return out


def _model_of(config: Optional[dict]) -> Optional[dict]:
    if not isinstance(config, dict):
        return None
    cfg = config.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    return {"class_name": config.get("class_name"), "name": name}


def _legacy_contents(reader: CheckpointReader, fmt: str) -> Contents:
    path = reader.filepath
    model_config = _json(reader.model_config, "model_config", path)
    classes = _class_names(model_config) if model_config else {}
    layers = []
    for name in reader.layer_names:
        fl = reader.layer(name)
        weights = [_weight(w) for w in fl.weights]
        weights += [_weight(x, f"{EXTRA_GROUP}/{e}") for e, x in fl.extras.items()]
        layers.append(Layer(name, classes.get(name) or fl.attrs.get("keras_class"), weights))
    top = reader.top_level()
    if top is not None and top.weights:
        layers.append(Layer(top.name, None, [_weight(w) for w in top.weights]))
    model = _model_of(model_config)
    torch_record = _json(reader.torch_config, "torch_config", path)
    if model is None and isinstance(torch_record, dict):
        model = {"class_name": f"torch:{torch_record.get('registered_name')}", "name": None}
    info = reader.attributes()
    # what the file says, without the reader's "1" for a file that does not say
    version = info.keras_version or read_str_attr(reader.group, "keras_version", path)
    out = Contents(path, fmt, layers, version, info.backend or reader.backend, model, model_config)
    out.training_config = _json(reader.training_config, "training_config", path)
    if OPT_GROUP in reader.file:
        group = resolve(reader.file, OPT_GROUP, path, OPT_GROUP)  # hard links only
        if isinstance(group, h5py.Group):
            out.optimizer = _optimizer_summary(group, path, out.training_config)
    return out


def _optimizer_summary(group: h5py.Group, path: str, training_config: Optional[dict]) -> dict:
    """Count and size of the optimizer's variables, and its iteration count where one is stored.

    Every dataset of the group counts, listed in its ``weight_names`` or not, and none is read
    but a scalar iteration count: the training record's tensors are for restoring, not sizing."""
    count, nbytes, iterations = 0, 0, None

    def visit(name: str, obj) -> None:
        nonlocal count, nbytes, iterations
        if not isinstance(obj, h5py.Dataset):
            return
        lazy = dataset_lazy(obj.id, name, path, "optimizer")
        count += 1
        nbytes += _weight(lazy).nbytes
        leaf = name.rsplit("/", 1)[-1].split(":")[0]
        if lazy.shape == () and (leaf in ("iter", "iterations", "iteration") or (name.endswith("vars/0") and
                                                                                  not lazy.dtype.is_floating_point)):  # fmt: skip
            iterations = int(lazy.read().item())

    try:
        group.visititems(visit)  # HDF5 visits hard links only
    except (OSError, RuntimeError, KeyError) as exc:
        raise FileFormatError(f"unreadable optimizer state: {exc}", filepath=path) from exc
    opt = (training_config or {}).get("optimizer_config") or {}
    name = opt.get("class_name") if isinstance(opt, dict) else None
    if name is None:
        name = read_str_attr(group, "name", path)
    return {"class_name": name, "variables": count, "nbytes": nbytes, "iterations": iterations}


def _store_contents(reader: CheckpointReader, fmt: str) -> Contents:
    """A Keras 3 variable store object by object (``layers/<path>/vars/<i>``, ``optimizer/vars/<i>``,
    root ``vars``), as the store keeps them: a layer's sub-objects (an LSTM's ``cell``) are listed
    on their own, not assembled into the layer as the reader's :meth:`layer` does."""
    config = reader.model_config or {}
    classes = _class_names(config) if config else {}
    layers, optimizer = [], None
    for obj_path, obj in reader.store.items():
        if obj_path == KERAS3_OPTIMIZER:
            optimizer = obj
            continue
        if obj_path.startswith((f"{KERAS3_OPTIMIZER}/", "metrics/")) or (obj_path == "" and not obj.vars):
            continue  # metric state and the root's empty vars group are not model weights
        weights = [_weight(v) for v in obj.vars]
        weights += [_weight(x, f"{EXTRAS}/{e}") for e, x in obj.extras.items()]
        layers.append(Layer(obj_path or "/", classes.get(obj.name) if obj.name else None, weights, obj.name))
    out = Contents(reader.filepath, fmt, layers)
    if fmt == "keras":
        out.model_config, out.keras_version = config, reader.keras_version
        _with_config(out)
    elif fmt == "weights-json":
        out.extra["shards"] = len(reader.files)
    if optimizer is not None:
        compile_cfg = config.get("compile_config") if isinstance(config, dict) else None
        opt = compile_cfg.get("optimizer") if isinstance(compile_cfg, dict) else None
        name = opt.get("class_name") if isinstance(opt, dict) else optimizer.name
        first = optimizer.vars[0] if optimizer.vars else None
        iterations = None
        if first is not None and first.shape == () and not first.dtype.is_floating_point:
            iterations = int(first.read().item())  # Keras 3 keeps the iteration count first
        out.optimizer = {"class_name": name, "variables": len(optimizer.vars),
                         "nbytes": sum(_weight(v).nbytes for v in optimizer.vars), "iterations": iterations}  # fmt: skip
    return out


def _with_config(out: Contents) -> Contents:
    """A ``.keras`` archive's model and training config, from its ``config.json``."""
    out.model = _model_of(out.model_config)
    compile_cfg = out.model_config.get("compile_config")
    out.training_config = compile_cfg if isinstance(compile_cfg, dict) else None
    return out


def _split_flat(key: str) -> tuple:
    """``<layer>/<weight>`` (Keras names; weights may hold more slashes) or torch's ``a.b.weight``."""
    if "/" in key:
        return tuple(key.split("/", 1))
    layer, _, weight = key.rpartition(".")
    return layer, weight


def _flat_contents(path: str, fmt: str, file: flat.FlatFile) -> Contents:
    """Group a flat file's ``{name: tensor}`` into layers, in the stored Keras order when recorded."""
    entries, metadata = [_weight(lazy) for lazy in file.tensors.values()], file.metadata
    layers: dict = {}
    layout = None
    if metadata.get(flat.LAYOUT_KEY):
        with contextlib.suppress(ValueError, TypeError):
            layout = [(str(lname), [str(w) for w in ws]) for lname, ws in json.loads(metadata[flat.LAYOUT_KEY])]
    by_key = {e.name: e for e in entries}
    if (
        layout is not None
        and sum(len(ws) for _, ws in layout) == len(entries)
        and all(f"{lname}/{w}" in by_key for lname, ws in layout for w in ws)
    ):
        for lname, ws in layout:
            layers[lname] = Layer(lname, None, [dataclasses.replace(by_key[f"{lname}/{w}"], name=w) for w in ws])
    else:
        for e in entries:
            lname, wname = _split_flat(e.name)
            layers.setdefault(lname, Layer(lname, None, [])).weights.append(dataclasses.replace(e, name=wname))
    names = metadata.get(flat.NAMES_KEY) or ("keras" if entries and all("/" in e.name for e in entries) else "torch")
    out = Contents(path, fmt, list(layers.values()), names=names)
    out.extra["metadata"] = {k: v for k, v in metadata.items() if k != flat.LAYOUT_KEY}
    return out


def short_name(name: str, layer: str) -> str:
    """A weight name without its layer path and ``:0`` suffix: tf.keras ``dense/kernel:0``, Keras 3
    ``sequential/dense/kernel`` and ``kernel`` all give ``kernel`` (nested: ``inner/kernel``)."""
    name = name.removesuffix(":0")
    if name.startswith(f"{layer}/"):
        return name[len(layer) + 1 :]
    at = name.find(f"/{layer}/")
    return name[at + len(layer) + 2 :] if at >= 0 else name
