"""``torchkeras-io``: inspect, convert, diff and verify Keras checkpoint files from the shell.

Every command reads files at the format level first (the first bytes say which format), so
``inspect`` and ``diff`` need no model code; ``convert`` and ``verify`` rebuild the model through
the public API (:func:`torchkeras_io.load_model`) where the target needs the architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import textwrap
import warnings
import zipfile
from typing import Callable, Optional, Sequence

import h5py
import numpy as np
import torch

from torchkeras_io._formats.keras3 import is_v3_store, sniff
from torchkeras_io._formats.legacy_h5 import (
    EXTRA_GROUP,
    LayerRecord,
    WeightsReader,
    _dataset_lazy,
    _resolve,
    read_str_attr,
    write_weights_group,
)
from torchkeras_io._formats.legacy_model import read_model_file_info
from torchkeras_io._tensors import Lazy, bits_equal
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_BAD_FILE = 0, 1, 2, 3
NAMES_KEY = "torchkeras_io.names"  # safetensors metadata: "keras" (<layer>/<weight>) or "torch"
LAYOUT_KEY = "torchkeras_io.layout"  # safetensors metadata: [[layer, [weight, ...]], ...] in Keras order

FORMATS = {
    "h5-model": "Keras legacy HDF5, full model (model.save('x.h5'))",
    "h5-weights": "Keras legacy HDF5, weights only (model.save_weights('x.h5'))",
    "weights-h5": "Keras 3 weights (model.save_weights('x.weights.h5'))",
    "keras": "Keras 3 model archive (model.save('x.keras'))",
    "weights-json": "Keras 3 sharded weights (model.save_weights('x.weights.json', max_shard_size=...))",
    "safetensors": "safetensors",
    "torch": "PyTorch state_dict (torch.save, zip format)",
}
OUT_EXTENSIONS = (  # longest first: ".weights.h5" before ".h5"
    (".weights.h5", "weights-h5"),
    (".weights.json", "weights-h5"),  # the sharded form: the library picks it by this name
    (".keras", "keras"),
    (".h5", "h5"),
    (".hdf5", "h5"),
    (".safetensors", "safetensors"),
    (".pt", "torch"),
    (".pth", "torch"),
    (".bin", "torch"),
)


class UsageError(Exception):
    """A request the tool cannot carry out as asked (exit 2), with what to do instead."""


# ------------------------------------------------------------------------------ file contents
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


def _lazy_weight(lazy: Lazy, name: Optional[str] = None) -> Weight:
    dtype = str(lazy.dtype).removeprefix("torch.")
    nbytes = int(np.prod(lazy.shape, dtype=np.int64)) * torch.empty((), dtype=lazy.dtype).element_size()
    return Weight(name or lazy.name, lazy.shape, dtype, nbytes, lazy.read)


def _tensor_weight(name: str, shape, dtype: torch.dtype, read: Callable) -> Weight:
    nbytes = int(np.prod(tuple(shape), dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    return Weight(name, tuple(int(s) for s in shape), str(dtype).removeprefix("torch."), nbytes, read)


def detect_format(path: str) -> str:
    """The file's format from its first bytes: a key of :data:`FORMATS`."""
    try:
        kind = sniff(path)  # HDF5 / ZIP / JSON, as every reader of the library tells them apart
    except OSError as exc:
        raise FileFormatError(f"cannot read: {exc.strerror or exc}", filepath=path) from exc
    if kind == "hdf5":
        try:
            with h5py.File(path, "r") as f:
                attrs = f.attrs
                if "layer_names" in attrs or "layer_names0" in attrs:
                    return "h5-weights"
                if "model_weights" in f:
                    return "h5-model"
                if is_v3_store(f):
                    return "weights-h5"
        except (OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=path) from exc
        raise FileFormatError("an HDF5 file, but not a Keras checkpoint (no layer_names, model_weights "
                              "or layers/ group)", filepath=path)  # fmt: skip
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise FileFormatError(f"a damaged ZIP archive: {exc}", filepath=path) from exc
        if "config.json" in names:
            return "keras"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        raise FileFormatError("a ZIP archive that is neither a .keras model nor a torch.save file", filepath=path)
    if kind == "json":
        return "weights-json"  # its index is checked when read
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8:
            return "safetensors"
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        raise FileFormatError("a pickle (legacy torch.save format?): not read, since unpickling can run code; "
                              "re-save it with torch.save in the default zip format", filepath=path)  # fmt: skip
    raise FileFormatError("unknown format: not HDF5, a .keras/torch ZIP archive or safetensors", filepath=path)


def read_contents(path: str, stack: contextlib.ExitStack) -> Contents:
    """Open ``path`` (kept open by ``stack`` until the weights are read) and list what it holds."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt in ("h5-model", "h5-weights"):
        return _read_legacy(path, fmt, stack)
    if fmt == "weights-h5":
        f = _h5_open(path, path)
        stack.callback(f.close)
        return _read_v3(path, fmt, f, {})
    if fmt == "keras":
        return _read_keras_zip(path, stack)
    if fmt == "weights-json":
        return _read_sharded(path, stack)
    if fmt == "safetensors":
        return _read_safetensors(path, stack)
    return _read_torch(path)


def _h5_open(source, path: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=path) from exc


def _json(text: Optional[str], what: str, path: str) -> Optional[dict]:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FileFormatError(f"'{what}' is not valid JSON: {exc}", filepath=path) from exc


def _class_names(config) -> dict:
    """``{layer name: class name}`` for every layer of a Keras model config, nested models included."""
    out: dict = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                out.setdefault(cfg["name"], node["class_name"])
            if isinstance(node.get("class_name"), str) and isinstance(node.get("name"), str):
                out.setdefault(node["name"], node["class_name"])  # Keras 1/2 functional entries
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return out


def _model_of(config: Optional[dict]) -> Optional[dict]:
    if not isinstance(config, dict):
        return None
    cfg = config.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    return {"class_name": config.get("class_name"), "name": name}


def _read_legacy(path: str, fmt: str, stack: contextlib.ExitStack) -> Contents:
    reader = WeightsReader(path)
    stack.callback(reader.close)
    info = read_model_file_info(path)
    model_config = _json(info.model_config, "model_config", path)
    classes = _class_names(model_config) if model_config else {}
    layers = []
    for name in reader.layer_names:
        fl = reader.layer(name)
        weights = [_lazy_weight(w) for w in fl.weights]
        weights += [_lazy_weight(x, f"{EXTRA_GROUP}/{e}") for e, x in fl.extras.items()]
        layers.append(Layer(name, classes.get(name) or fl.attrs.get("keras_class"), weights))
    top = reader.top_level()
    if top is not None and top.weights:
        layers.append(Layer(top.name, None, [_lazy_weight(w) for w in top.weights]))
    model = _model_of(model_config)
    torch_record = _json(info.torch_config, "torch_config", path)
    if model is None and isinstance(torch_record, dict):
        model = {"class_name": f"torch:{torch_record.get('registered_name')}", "name": None}
    version = info.keras_version or read_str_attr(reader.group, "keras_version", path)
    out = Contents(path, fmt, layers, version, info.backend or reader.backend, model, model_config)
    out.training_config = _json(info.training_config, "training_config", path)
    if "optimizer_weights" in reader.file:
        group = _resolve(reader.file, "optimizer_weights", path, "optimizer_weights")  # hard links only
        if isinstance(group, h5py.Group):
            out.optimizer = _optimizer_summary(group, path, out.training_config)
    return out


def _optimizer_summary(group: h5py.Group, path: str, training_config: Optional[dict]) -> dict:
    """Count and size of the optimizer's variables, and its iteration count where one is stored."""
    count, nbytes, iterations = 0, 0, None

    def visit(name: str, obj) -> None:
        nonlocal count, nbytes, iterations
        if not isinstance(obj, h5py.Dataset):
            return
        lazy = _dataset_lazy(obj.id, name, path, "optimizer")
        count += 1
        nbytes += _lazy_weight(lazy).nbytes
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


def _read_v3(path: str, fmt: str, f: h5py.File, config: dict) -> Contents:
    """A Keras 3 variable store: ``layers/<path>/vars/<i>``, ``optimizer/vars/<i>``, root ``vars``."""
    from torchkeras_io._formats.keras3 import read_store

    classes = _class_names(config) if config else {}
    layers, optimizer = [], None
    for obj_path, obj in read_store(f, path).items():
        if obj_path == "optimizer":
            optimizer = obj
            continue
        if obj_path.startswith(("optimizer/", "metrics/")) or (obj_path == "" and not obj.vars):
            continue  # metric state and the root's empty vars group are not model weights
        weights = [_lazy_weight(v) for v in obj.vars]
        weights += [_lazy_weight(x, f"torch_extras/{e}") for e, x in obj.extras.items()]
        layers.append(Layer(obj_path or "/", classes.get(obj.name) if obj.name else None, weights, obj.name))
    out = Contents(path, fmt, layers)
    if optimizer is not None:
        compile_cfg = config.get("compile_config") if isinstance(config, dict) else None
        opt = compile_cfg.get("optimizer") if isinstance(compile_cfg, dict) else None
        name = opt.get("class_name") if isinstance(opt, dict) else optimizer.name
        first = optimizer.vars[0] if optimizer.vars else None
        iterations = None
        if first is not None and first.shape == () and not first.dtype.is_floating_point:
            iterations = int(first.read().item())  # Keras 3 keeps the iteration count first
        out.optimizer = {"class_name": name, "variables": len(optimizer.vars),
                         "nbytes": sum(_lazy_weight(v).nbytes for v in optimizer.vars), "iterations": iterations}  # fmt: skip
    return out


def _read_sharded(path: str, stack: contextlib.ExitStack) -> Contents:
    """A sharded Keras 3 store: the ``.weights.json`` index and its ``.weights.h5`` shards beside it."""
    from torchkeras_io._formats.keras3 import read_sharded_index

    shards = read_sharded_index(path)  # shard names checked: files in the index's own folder only
    files = []
    for shard in shards:
        files.append(_h5_open(shard, shard))
        stack.callback(files[-1].close)
    out = _read_v3(path, "weights-json", files, {})  # an object's variables may span shards
    out.extra["shards"] = len(shards)
    return out


def _read_keras_zip(path: str, stack: contextlib.ExitStack) -> Contents:
    from torchkeras_io._formats.keras3 import CONFIG, METADATA, WEIGHTS, KerasArchive

    archive = KerasArchive(path)  # size-checked members, read in memory, never extracted
    stack.callback(archive.close)
    config = archive.json(CONFIG)
    metadata = archive.json(METADATA) if archive.has(METADATA) else {}
    if archive.has(WEIGHTS):
        out = _read_v3(path, "keras", archive.weights(), config)
    else:
        out = Contents(path, "keras", [])
        out.extra["weights"] = f"no {WEIGHTS} member (npz or sharded weights are not read)"
    out.model, out.model_config = _model_of(config), config
    out.keras_version = metadata.get("keras_version")
    compile_cfg = config.get("compile_config")
    out.training_config = compile_cfg if isinstance(compile_cfg, dict) else None
    return out


def _split_flat(key: str) -> tuple:
    """``<layer>/<weight>`` (Keras names; weights may hold more slashes) or torch's ``a.b.weight``."""
    if "/" in key:
        return tuple(key.split("/", 1))
    layer, _, weight = key.rpartition(".")
    return layer, weight


def _flat_contents(path: str, fmt: str, entries: list, metadata: dict) -> Contents:
    """Group flat ``{name: tensor}`` entries into layers, in the stored Keras order when recorded."""
    layers: dict = {}
    layout = None
    if metadata.get(LAYOUT_KEY):
        with contextlib.suppress(ValueError, TypeError):
            layout = [(str(lname), [str(w) for w in ws]) for lname, ws in json.loads(metadata[LAYOUT_KEY])]
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
    names = metadata.get(NAMES_KEY) or ("keras" if entries and all("/" in e.name for e in entries) else "torch")
    out = Contents(path, fmt, list(layers.values()), names=names)
    out.extra["metadata"] = {k: v for k, v in metadata.items() if k != LAYOUT_KEY}
    return out


def _read_safetensors(path: str, stack: contextlib.ExitStack) -> Contents:
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise UsageError("reading safetensors files needs the safetensors package: pip install safetensors") from exc
    try:
        f = stack.enter_context(safe_open(path, framework="pt"))
        entries = []
        for key in f.keys():
            sl = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
            if dtype is None:
                raise FileFormatError(f"unsupported dtype {sl.get_dtype()}", filepath=path, weight=key)
            entries.append(_tensor_weight(key, sl.get_shape(), dtype, lambda k=key: f.get_tensor(k)))
        metadata = f.metadata() or {}
    except SafetensorError as exc:
        raise FileFormatError(f"not a valid safetensors file: {exc}", filepath=path) from exc
    return _flat_contents(path, "safetensors", entries, metadata)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}  # fmt: skip


def _read_torch(path: str) -> Contents:
    try:
        # weights_only: tensors and plain containers only, no arbitrary classes from the pickle
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"not a loadable torch state_dict (weights_only): {first}", filepath=path) from exc
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise FileFormatError(f"holds a {type(obj).__name__}, not a state_dict", filepath=path)
    entries = []
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FileFormatError("not a state_dict: every entry must be a tensor under a string key",
                                  filepath=path, weight=str(key))  # fmt: skip
        entries.append(_tensor_weight(key, value.shape, value.dtype, lambda v=value: v))
    return _flat_contents(path, "torch", entries, {})


# ----------------------------------------------------------------------------------- printing
def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _summary(c: Contents) -> dict:
    params = sum(int(np.prod(w.shape, dtype=np.int64)) for layer in c.layers for w in layer.weights)
    out = {
        "file": c.path,
        "format": c.format,
        "format_description": FORMATS[c.format],
        "keras_version": c.keras_version,
        "backend": c.backend,
        "model": c.model,
        "names": c.names,
        "layers": [
            {
                "name": layer.name,
                "class_name": layer.class_name,
                "keras_name": layer.keras_name,
                "weights": [w.as_json() for w in layer.weights],
            }
            for layer in c.layers
        ],  # fmt: skip
        "num_layers": len(c.layers),
        "num_weights": c.weight_count(),
        "num_params": params,
        "nbytes": sum(w.nbytes for layer in c.layers for w in layer.weights),
        "training_config": c.training_config,
        "optimizer": c.optimizer,
    }
    out.update(c.extra)
    return out


def _describe_training(tc: dict) -> list:
    lines = []
    opt = tc.get("optimizer_config") or tc.get("optimizer")
    if isinstance(opt, dict):
        cfg = opt.get("config") if isinstance(opt.get("config"), dict) else {}
        keys = ("learning_rate", "lr", "momentum", "beta_1", "beta_2", "epsilon", "rho", "weight_decay")
        hyper = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg and not isinstance(cfg[k], (dict, list)))
        lines.append(f"optimizer {opt.get('class_name')}" + (f" ({hyper})" if hyper else ""))
    for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
        if tc.get(key) not in (None, [], {}):
            lines.append(f"{key} {json.dumps(tc[key])[:200]}")
    return lines


def _print_inspect(c: Contents) -> None:
    s = _summary(c)
    print(f"file:          {c.path}")
    print(f"format:        {FORMATS[c.format]}")
    if c.keras_version or c.backend:
        print(f"keras version: {c.keras_version or '?'}" + (f" (backend {c.backend})" if c.backend else ""))
    if c.model:
        print(f"model:         {c.model.get('class_name')} '{c.model.get('name')}'")
    else:
        print("model:         none (weights only: no architecture in the file)")
    if c.names:
        print(f"names:         {'Keras <layer>/<weight>' if c.names == 'keras' else 'torch state_dict keys'}")
    print(f"weights:       {s['num_weights']} in {len(c.layers)} layers, {s['num_params']:,} values, "
          f"{_fmt_bytes(s['nbytes'])}")  # fmt: skip
    for key, value in c.extra.items():
        if value:
            print(f"{key + ':':<14} {value}")
    if c.layers:
        print()
        rows = []
        for layer in c.layers:
            label = layer.name + (f" ({layer.class_name})" if layer.class_name else "")
            if layer.keras_name and layer.keras_name != layer.name.rsplit("/", 1)[-1]:
                label += f" name='{layer.keras_name}'"
            rows.append((label, "", "", "", ""))
            for w in layer.weights:
                rows.append(("", w.name, _fmt_shape(w.shape), w.dtype, _fmt_bytes(w.nbytes)))
        head = ("layer", "weight", "shape", "dtype", "size")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print()
    if c.training_config:
        print("training config:")
        for line in _describe_training(c.training_config) or [json.dumps(c.training_config)[:200]]:
            print(f"  {line}")
    else:
        print("training config: none")
    if c.optimizer:
        o = c.optimizer
        it = f", iterations {o['iterations']}" if o.get("iterations") is not None else ""
        print(f"optimizer state: {o.get('class_name') or '?'}: {o['variables']} variables, "
              f"{_fmt_bytes(o['nbytes'])}{it}")  # fmt: skip
    else:
        print("optimizer state: none")


# ------------------------------------------------------------------------------------ commands
def cmd_inspect(args) -> int:
    """``inspect FILE``: what the file holds, as a table or (``--json``) one JSON object."""
    with contextlib.ExitStack() as stack:
        c = read_contents(args.file, stack)
        if args.json:
            print(json.dumps(_summary(c), indent=2))
        else:
            _print_inspect(c)
    return EXIT_OK


def _out_kind(path: str) -> str:
    low = path.lower()
    for ext, kind in OUT_EXTENSIONS:
        if low.endswith(ext):
            return kind
    raise UsageError(f"cannot tell the output format from '{path}': use one of "
                     + ", ".join(ext for ext, _ in OUT_EXTENSIONS))  # fmt: skip


def _supports(fn, keyword: str = "format") -> bool:
    import inspect as _inspect

    return keyword in _inspect.signature(fn).parameters


def _keras_named(c: Contents) -> list:
    """``[(layer, [(weight name, Weight)])]`` with short Keras weight names (``kernel``)."""
    return [(layer.name, [(_short(w.name, layer.name), w) for w in layer.weights]) for layer in c.layers]


def _write_flat(tensors: dict, out: str, kind: str, metadata: dict, force: bool) -> None:
    from torchkeras_io._formats.atomic import atomic_write_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_write_path(out, overwrite=force) as tmp:
        if kind == "safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError as exc:
                raise UsageError("writing safetensors files needs the safetensors package: pip install "
                                 "safetensors") from exc  # fmt: skip
            # safetensors refuses tensors that share memory; clones keep the values bit for bit
            seen, unique = set(), {}
            for k, v in tensors.items():
                ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
                unique[k] = v.clone() if ptr in seen else v
                seen.add(ptr)
            save_file(unique, tmp, metadata=metadata)
        else:
            torch.save(tensors, tmp)


def cmd_convert(args) -> int:
    """``convert IN OUT``: the format chosen by OUT's extension (see ``convert --help``)."""
    src, dst = os.fspath(args.input), os.fspath(args.output)
    kind = _out_kind(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError("input and output are the same file")
    if os.path.exists(dst) and not args.force:
        raise UsageError(f"'{dst}' exists: pass --force to replace it")
    import torchkeras_io as tkio

    with contextlib.ExitStack() as stack:
        c = read_contents(src, stack)
        if kind in ("safetensors", "torch"):
            if c.has_architecture and not args.keras_names:
                model = tkio.load_model(src, compile=False)
                _write_flat(model.module.state_dict(), dst, kind, {NAMES_KEY: "torch"}, args.force)
                what = "the model's torch state_dict"
            elif c.format == "torch" or c.format == "safetensors":
                sep = "/" if c.names == "keras" else "."  # the names as they were split on reading
                tensors = {f"{layer.name}{sep}{w.name}" if layer.name else w.name: w.read()
                           for layer in c.layers for w in layer.weights}  # fmt: skip
                layout = [[layer.name, [w.name for w in layer.weights]] for layer in c.layers]
                meta = {NAMES_KEY: c.names or "torch"}
                if c.names == "keras":
                    meta[LAYOUT_KEY] = json.dumps(layout)
                _write_flat(tensors, dst, kind, meta, args.force)
                what = "the same tensors"
            else:
                named = _keras_named(c)
                tensors = {f"{lname}/{wname}": w.read() for lname, ws in named for wname, w in ws}
                layout = [[lname, [wname for wname, _ in ws]] for lname, ws in named]
                if len(tensors) != sum(len(ws) for _, ws in named):
                    raise FileFormatError("two weights share a <layer>/<weight> name", filepath=src)
                meta = {NAMES_KEY: "keras", LAYOUT_KEY: json.dumps(layout), "source_format": c.format}
                _write_flat(tensors, dst, kind, meta, args.force)
                what = "the file's weights under Keras names <layer>/<weight>"
        elif kind == "h5":
            if c.has_architecture:
                model = _load_for_saving(src, args.no_optimizer)
                if args.weights_only:
                    model.save_weights(dst)
                    what = "the model's weights (legacy HDF5 weights file)"
                else:
                    tkio.save_model(model, dst)
                    what = "the model (legacy HDF5 full-model file)"
            elif c.format in ("safetensors", "torch") and c.names != "keras":
                raise UsageError(
                    f"'{src}' holds torch state_dict names; writing Keras weights from them needs the module's "
                    "Python code, which a command line cannot import. In Python: module.load_state_dict(...); "
                    f"torchkeras_io.save_weights(module, '{dst}')"
                )
            elif c.format in _V3_STORES or c.extra.get("metadata", {}).get("source_format") in _V3_STORES:
                raise UsageError("a Keras 3 .weights.h5 file has no weight names and no architecture; converting "
                                 "it to the legacy layout needs the model: load it into a Keras model and call "
                                 "save_weights, or convert the .keras file instead")  # fmt: skip
            else:
                _write_legacy_weights(_keras_named(c), dst, args.force)
                what = "the weights (legacy HDF5 weights file)"
        else:  # Keras 3 formats: written by the library once it supports them
            fn = tkio.save_model if kind == "keras" else tkio.save_weights
            if not _supports(fn):
                raise UsageError(f"this torchkeras_io {tkio.__version__} cannot write Keras 3 '{dst}' files yet; "
                                 "convert to .h5 instead")  # fmt: skip
            if not c.has_architecture:
                raise UsageError(f"'{src}' has no architecture; a Keras 3 file needs one. Convert a full-model "
                                 "file, or save from Python with torchkeras_io.save_weights(module, ...)")  # fmt: skip
            model = _load_for_saving(src, args.no_optimizer)
            if kind == "keras":
                tkio.save_model(model, dst)
                what = "the model (Keras 3 .keras archive)"
            else:
                tkio.save_weights(model.module, dst, layer_names=model.keras_layer_names)
                what = "the model's weights (Keras 3 .weights.h5)"
    if not args.quiet:
        print(f"wrote {dst}: {what}, from {FORMATS[c.format]} '{src}'")
    return EXIT_OK


_V3_STORES = ("weights-h5", "weights-json", "keras")  # variables by position, not by name


def _load_for_saving(src: str, no_optimizer: bool):
    """The model with its optimizer, loss and metrics where they can be rebuilt, so they are written too."""
    import torchkeras_io as tkio

    if not no_optimizer:
        try:
            return tkio.load_model(src, compile=True)
        except TorchKerasIOError as exc:
            print(f"torchkeras-io: warning: training state not converted ({_one_line(exc)})", file=sys.stderr)
    return tkio.load_model(src, compile=False)


def _write_legacy_weights(named: list, dst: str, force: bool) -> None:
    from torchkeras_io._formats.atomic import atomic_write_path
    from torchkeras_io._version import __version__

    extra = f"{EXTRA_GROUP}/"  # torch-only state (num_batches_tracked, ...) goes back where Keras ignores it
    records = [
        LayerRecord(
            lname,
            [Lazy.of(wname, w.read()) for wname, w in ws if not wname.startswith(extra)],
            [Lazy.of(wname[len(extra) :], w.read()) for wname, w in ws if wname.startswith(extra)],
        )
        for lname, ws in named
    ]
    with atomic_write_path(dst, overwrite=force) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["torchkeras_io_version"] = __version__
            write_weights_group(f, records)


def _short(name: str, layer: str) -> str:
    """A weight name without its layer path and ``:0`` suffix: tf.keras ``dense/kernel:0``, Keras 3
    ``sequential/dense/kernel`` and ``kernel`` all give ``kernel`` (nested: ``inner/kernel``)."""
    name = name.removesuffix(":0")
    if name.startswith(f"{layer}/"):
        return name[len(layer) + 1 :]
    at = name.find(f"/{layer}/")
    return name[at + len(layer) + 2 :] if at >= 0 else name


_EXTRA_PREFIXES = (f"{EXTRA_GROUP}/", "torch_extras/")  # torch-only state in legacy and Keras 3 files


def _torch_extra(name: str) -> Optional[str]:
    """The torch name of torch-only state (``num_batches_tracked``), else None."""
    for prefix in _EXTRA_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def _pair_weights(la: Layer, lb: Layer) -> tuple:
    """Weights of two same-named layers: (pairs, only in A, only in B, torch-only state on one side).

    Keras weights pair by name, else by position (Keras 3 stores are unnamed); torch-only state
    pairs by its torch name."""
    ka = [w for w in la.weights if _torch_extra(w.name) is None]
    kb = [w for w in lb.weights if _torch_extra(w.name) is None]
    ea = {_torch_extra(w.name): w for w in la.weights if _torch_extra(w.name) is not None}
    eb = {_torch_extra(w.name): w for w in lb.weights if _torch_extra(w.name) is not None}
    extras = [(f"{EXTRA_GROUP}/{k}", ea[k], eb[k]) for k in ea if k in eb]
    one_side = [f"{EXTRA_GROUP}/{k}" for k in ea if k not in eb] + [f"{EXTRA_GROUP}/{k}" for k in eb if k not in ea]
    na = {_short(w.name, la.name): w for w in ka}
    nb = {_short(w.name, lb.name): w for w in kb}
    if set(na) == set(nb) and len(na) == len(ka) and len(nb) == len(kb):
        return [(k, na[k], nb[k]) for k in na] + extras, [], [], one_side
    if len(ka) == len(kb):
        pairs = []
        for wa, wb in zip(ka, kb):
            sa, sb = _short(wa.name, la.name), _short(wb.name, lb.name)
            pairs.append((sa if sa == sb else f"{sa}|{sb}", wa, wb))
        return pairs + extras, [], [], one_side
    common = [(k, na[k], nb[k]) for k in na if k in nb]
    return common + extras, [k for k in na if k not in nb], [k for k in nb if k not in na], one_side


def _by_layer_name(c: Contents) -> dict:
    """Layers by Keras name: a Keras 3 store's object paths (``layers/dense_1``) give way to the
    layers' own names (``head``) where those are recorded and unique, so it compares with legacy files."""
    own = [layer.keras_name for layer in c.layers]
    use_own = all(own) and len(set(own)) == len(own)
    return {(layer.keras_name if use_own else layer.name): layer for layer in c.layers}


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(bit-identical, max |a - b|, max |b|) in float64."""
    identical = bits_equal(a, b)
    x, y = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if x.numel() == 0:
        return identical, 0.0, 0.0
    return identical, float((x - y).abs().max()), float(y.abs().max())


def cmd_diff(args) -> int:
    """``diff A B``: weights compared layer by layer; exit 1 when any differ beyond the tolerance."""
    rows = []
    counts = {"identical": 0, "close": 0, "different": 0, "shape": 0, "only_a": 0, "only_b": 0, "torch_only": 0}
    with contextlib.ExitStack() as stack:
        ca, cb = read_contents(args.a, stack), read_contents(args.b, stack)
        la, lb = _by_layer_name(ca), _by_layer_name(cb)
        for name in list(la) + [n for n in lb if n not in la]:
            if name not in lb or name not in la:  # a layer without weights (Flatten, Input) is no difference
                if (la.get(name) or lb.get(name)).weights:
                    rows.append({"layer": name, "weight": None, "status": "only_a" if name in la else "only_b"})
                continue
            pairs, only_a, only_b, torch_only = _pair_weights(la[name], lb[name])
            rows += [{"layer": name, "weight": w, "status": "only_a"} for w in only_a]
            rows += [{"layer": name, "weight": w, "status": "only_b"} for w in only_b]
            rows += [{"layer": name, "weight": w, "status": "torch_only"} for w in torch_only]
            for wname, wa, wb in pairs:
                row = {"layer": name, "weight": wname, "shape_a": list(wa.shape), "shape_b": list(wb.shape),
                       "dtype_a": wa.dtype, "dtype_b": wb.dtype}  # fmt: skip
                if tuple(wa.shape) != tuple(wb.shape):
                    row["status"] = "shape"
                else:
                    identical, max_abs, scale = _compare(wa.read(), wb.read())
                    row["max_abs"] = max_abs
                    row["max_rel"] = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
                    if identical:
                        row["status"] = "identical"
                    elif max_abs <= args.atol + args.rtol * scale:
                        row["status"] = "close"
                    else:
                        row["status"] = "different"
                rows.append(row)
    for r in rows:
        counts[r["status"]] += 1
    differs = counts["different"] + counts["shape"] + counts["only_a"] + counts["only_b"] > 0
    if args.json:
        print(_dumps({"a": args.a, "b": args.b, "atol": args.atol, "rtol": args.rtol, "equal": not differs,
                          "counts": counts, "weights": rows}))  # fmt: skip
    else:
        shown = rows if args.all else [r for r in rows if r["status"] != "identical"]
        table = [("layer", "weight", "status", "max abs", "max rel", "detail")]
        for r in shown:
            detail = ""
            if r["status"] == "shape":
                detail = f"{_fmt_shape(r['shape_a'])} vs {_fmt_shape(r['shape_b'])}"
            elif r.get("dtype_a") and r["dtype_a"] != r["dtype_b"]:
                detail = f"dtype {r['dtype_a']} vs {r['dtype_b']}"
            status = {"only_a": "only in A", "only_b": "only in B", "torch_only": "torch-only state, one side"}.get(
                r["status"], r["status"]
            )
            table.append((r["layer"], r["weight"] or "(whole layer)", status,
                          f"{r['max_abs']:.3g}" if "max_abs" in r else "", f"{r['max_rel']:.3g}" if "max_rel" in r
                          else "", detail))  # fmt: skip
        if len(table) > 1:
            widths = [max(len(t[i]) for t in table) for i in range(6)]
            for t in table:
                print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
        print(f"A: {args.a}\nB: {args.b}\n{counts['identical']} identical, {counts['close']} within tolerance, "
              f"{counts['different']} different, {counts['shape']} shape mismatches, {counts['only_a']} only in A, "
              f"{counts['only_b']} only in B" + (f", {counts['torch_only']} torch-only state on one side (not a "
              "difference)" if counts["torch_only"] else "") + (": DIFFERENT" if differs else ": SAME"))  # fmt: skip
    return EXIT_DIFFERENT if differs else EXIT_OK


# -------------------------------------------------------------------------------------- verify
def _import_keras(flavor: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not our output
    if flavor == "tf_keras":
        import tf_keras

        return tf_keras
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 reads it once, at its first import
    import keras

    return keras


def _pick_keras(choice: str, keras_version: Optional[str], fmt: str) -> list:
    """The Keras flavors to try, in order."""
    if choice != "auto":
        return [choice]
    v3 = fmt == "keras" or (keras_version or "").startswith("3")
    return ["keras3", "tf_keras"] if v3 else ["tf_keras", "keras3"]


def _random_inputs(graph, seed: int, batch: int, unknown: int) -> list:
    """A seeded batch: normal floats, or valid token ids for an input that feeds an Embedding."""
    from torchkeras_io._graph.graph import _torch_dtype

    rng = np.random.default_rng(seed)
    vocab = _embedding_vocab(graph.keras_config)
    out = []
    for i, (shape, name) in enumerate(zip(graph.input_shapes, graph.input_dtypes)):
        dtype = _torch_dtype(name if isinstance(name, str) else None)
        dims = [batch] + [unknown if d is None else int(d) for d in list(shape)[1:]]
        high = vocab.get(i)
        if high is not None or not dtype.is_floating_point:
            arr = rng.integers(0, high or 10, size=dims)
            out.append(torch.as_tensor(arr).to(dtype))
        else:
            out.append(torch.as_tensor(rng.standard_normal(dims).astype(np.float32)).to(dtype))
    return out


def _embedding_vocab(config: Optional[dict]) -> dict:
    """``{input index: smallest input_dim}`` of the Embedding layers an input feeds directly."""
    if not isinstance(config, dict):
        return {}
    cfg = config.get("config")
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers", [])
    layers = [x for x in layers if isinstance(x, dict)]
    if config.get("class_name") == "Sequential":
        first = next((x for x in layers if x.get("class_name") != "InputLayer"), None)
        if first and first.get("class_name") == "Embedding":
            return {0: int(first["config"]["input_dim"])}
        return {}
    inputs = [ref[0] for ref in (cfg or {}).get("input_layers", []) if isinstance(ref, list) and ref]
    if (cfg or {}).get("input_layers") and isinstance(cfg["input_layers"][0], str):
        inputs = [cfg["input_layers"][0]]
    out: dict = {}
    text_of = json.dumps
    for x in layers:
        if x.get("class_name") != "Embedding":
            continue
        inbound = text_of(x.get("inbound_nodes", []))
        for i, name in enumerate(inputs):
            if f'"{name}"' in inbound:
                dim = int(x["config"]["input_dim"])
                out[i] = min(out.get(i, dim), dim)
    return out


def _to_numpy(k, t) -> np.ndarray:
    if hasattr(k, "ops") and hasattr(k.ops, "convert_to_numpy"):
        return np.asarray(k.ops.convert_to_numpy(t))
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _node_outputs(layer) -> list:
    """The outputs of each call of ``layer`` (tf-keras ``get_output_at``, Keras 3 node attributes)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    get = getattr(layer, "get_output_at", None)
    out = []
    for i in range(len(nodes)):
        try:
            out.append(get(i) if get is not None else layer._get_node_attribute_at_index(i, "output_tensors", "output"))
        except (AttributeError, ValueError, RuntimeError, IndexError):
            continue
    return out


def _keras_layer_outputs(k, kmodel, inputs: list) -> dict:
    """``{layer name: [numpy outputs]}`` of every layer's first call in the model, from one functional
    model that returns them all (Keras's own way to see inside a model)."""
    model_inputs = list(kmodel.inputs)
    chosen = []
    for layer in kmodel.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        with contextlib.suppress(AttributeError, ValueError, RuntimeError):
            chosen.append((layer.name, layer.output))
    try:
        probe = k.Model(model_inputs, [t for _, out in chosen for t in _as_list(out)])
    except Exception:  # noqa: BLE001 - Keras: "Graph disconnected" and kin, for shared and nested layers
        # node 0 of a shared or nested layer belongs to another graph: find the call in this one
        chosen = []
        for layer in kmodel.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            for out in _node_outputs(layer):
                try:
                    k.Model(model_inputs, _as_list(out))
                except Exception:  # noqa: BLE001 - not connected to this model's inputs
                    continue
                chosen.append((layer.name, out))
                break
        if not chosen:
            return {}
        probe = k.Model(model_inputs, [t for _, out in chosen for t in _as_list(out)])
    values = probe(list(inputs), training=False)
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    result, i = {}, 0
    for name, out in chosen:
        n = len(_as_list(out))
        result[name] = [_to_numpy(k, v) for v in values[i : i + n]]
        i += n
    return result


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _rel(a: np.ndarray, b: np.ndarray) -> tuple:
    """(max |a - b|, max |a - b| / max |b|) in float64; shapes must match."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    err, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))


def cmd_verify(args) -> int:
    """``verify FILE``: per-layer output differences against Keras; exit 1 when outputs differ."""
    import torchkeras_io as tkio
    from torchkeras_io._graph.graph import KerasGraph

    fmt = detect_format(args.file)
    model = tkio.load_model(args.file, compile=False)
    graph = model.module
    if not isinstance(graph, KerasGraph):
        raise UsageError(f"'{args.file}' holds a torch-side record (a registered torch module), not a Keras model: "
                         "there is no Keras model to verify against")  # fmt: skip
    inputs = _random_inputs(graph, args.seed, args.batch_size, args.unknown_dim)
    with torch.no_grad():
        t_final = model(*inputs)
        t_layers = graph.layer_outputs(*inputs)
    t_final = [t.numpy() for t in (t_final if isinstance(t_final, tuple) else (t_final,))]
    version = read_model_file_info(args.file).keras_version if fmt.startswith("h5") else None
    result = {"file": args.file, "keras": None, "seed": args.seed, "batch_size": args.batch_size,
              "rtol": args.rtol, "inputs": [list(x.shape) for x in inputs], "layers": [], "outputs": []}  # fmt: skip
    missing, failed = [], []
    k = kmodel = None
    for candidate in _pick_keras(args.keras, version, fmt):  # under auto: the other Keras when one cannot
        try:
            k = _import_keras(candidate)
        except ImportError as exc:
            missing.append(f"{candidate}: {exc}")
            continue
        try:
            kmodel = k.models.load_model(args.file, compile=False)
        except Exception as exc:  # noqa: BLE001 - whatever Keras raises, the verdict is that it could not load it
            failed.append(f"{candidate} could not load the file: {type(exc).__name__}: {_one_line(exc)[:300]}")
            continue
        result["keras"] = candidate
        break
    if kmodel is None and not failed:
        if args.keras != "auto":
            raise UsageError(f"--keras {args.keras}: not importable ({'; '.join(missing)})")
        result["ok"] = True
        result["note"] = "no Keras installed: only loading and a forward pass in torchkeras_io were checked"
        _print_verify(result, args)
        return EXIT_OK
    if kmodel is None:
        result["ok"] = False
        result["note"] = "; ".join(failed)
        _print_verify(result, args)
        return EXIT_DIFFERENT
    feed = [x.numpy() for x in inputs]
    k_layers = _keras_layer_outputs(k, kmodel, feed)
    k_final = kmodel(feed if len(feed) > 1 else feed[0], training=False)
    k_final = [_to_numpy(k, v) for v in (k_final if isinstance(k_final, (list, tuple)) else [k_final])]
    for name, k_outs in k_layers.items():
        calls = sorted(node for layer, node in t_layers if layer == name)
        t_outs = t_layers[(name, calls[0])] if calls else None  # its first call, as on the Keras side
        row = {"layer": name, "shape": [list(x.shape) for x in k_outs]}
        if t_outs is None or len(t_outs) != len(k_outs):
            row["status"] = "not compared"
        elif any(tuple(t.shape) != tuple(x.shape) for t, x in zip(t_outs, k_outs) if isinstance(t, torch.Tensor)):
            row["status"] = "shape"
            row["torch_shape"] = [list(t.shape) for t in t_outs]
        else:
            diffs = [_rel(t.detach().numpy(), x) for t, x in zip(t_outs, k_outs) if isinstance(t, torch.Tensor)]
            row["max_abs"] = max((d[0] for d in diffs), default=0.0)
            row["max_rel"] = max((d[1] for d in diffs), default=0.0)
            row["status"] = "ok" if row["max_rel"] <= args.rtol else "DIFF"
        result["layers"].append(row)
    ok = len(t_final) == len(k_final)
    for i, (t, x) in enumerate(zip(t_final, k_final)):
        if t.shape != x.shape:
            result["outputs"].append({"output": i, "status": "shape", "torch_shape": list(t.shape),
                                      "keras_shape": list(x.shape)})  # fmt: skip
            ok = False
            continue
        err, rel = _rel(t, x)
        good = rel <= args.rtol
        ok = ok and good
        result["outputs"].append({"output": i, "shape": list(x.shape), "max_abs": err, "max_rel": rel,
                                  "status": "ok" if good else "DIFF"})  # fmt: skip
    result["ok"] = ok
    _print_verify(result, args)
    return EXIT_OK if ok else EXIT_DIFFERENT


def _print_verify(result: dict, args) -> None:
    if args.json:
        print(_dumps(result))
        return
    print(f"file: {result['file']}")
    print(f"inputs: {', '.join(_fmt_shape(s) for s in result['inputs'])} (seed {result['seed']})"
          + (f"; reference: {result['keras']}" if result["keras"] else ""))  # fmt: skip
    if result["layers"]:
        table = [("layer", "output shape", "max abs diff", "max rel diff", "status")]
        for r in result["layers"]:
            table.append((r["layer"], " ".join(_fmt_shape(s) for s in r["shape"]),
                          f"{r['max_abs']:.3g}" if "max_abs" in r else "",
                          f"{r['max_rel']:.3g}" if "max_rel" in r else "", r["status"]))  # fmt: skip
        widths = [max(len(t[i]) for t in table) for i in range(5)]
        for t in table:
            print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    for o in result["outputs"]:
        if o["status"] == "shape":
            print(f"output {o['output']}: shape {_fmt_shape(o['torch_shape'])} vs Keras {_fmt_shape(o['keras_shape'])}")
        else:
            print(f"output {o['output']} {_fmt_shape(o['shape'])}: max abs diff {o['max_abs']:.3g}, "
                  f"max rel diff {o['max_rel']:.3g} (rtol {result['rtol']:g}): {o['status']}")  # fmt: skip
    if result.get("note"):
        print(result["note"])
    print("VERIFIED" if result["ok"] else "FAILED")


def _dumps(obj) -> str:
    """Strict JSON: NaN and infinite differences become the strings "nan" and "inf"."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------- main
_EPILOG = """\
formats (detected from the file's first bytes, never from its name):
  legacy HDF5 (.h5)          Keras 1/2, tf.keras and Keras 3 model.save("x.h5") / save_weights("x.h5")
  Keras 3 .weights.h5        variables by position (layers/<path>/vars/<i>), no weight names
  Keras 3 .weights.json      the sharded form: an index and its .weights.h5 shards beside it
  Keras 3 .keras             ZIP of config.json, metadata.json, model.weights.h5 (read in memory)
  safetensors                read with safetensors.safe_open (pip install safetensors)
  torch state_dict           torch.save zip files, read with torch.load(weights_only=True, mmap=True)

exit codes (stable, for scripts):
  0  success (diff: no differences; verify: outputs within tolerance)
  1  diff found differences, or verify failed (outputs differ, or Keras could not load the file)
  2  usage error: bad arguments, or a conversion that needs Python (the message says how)
  3  the file is unreadable, invalid, or holds something torchkeras_io cannot build

Messages go to stderr as one line ("torchkeras-io: error: ..."); --debug shows the traceback.
"""

_EXAMPLES = """\
examples:
  torchkeras-io inspect model.h5                     what the file holds (add --json for scripts)
  torchkeras-io convert model.h5 model.keras         legacy HDF5 -> Keras 3, optimizer state included
  torchkeras-io convert model.h5 model.safetensors   the torch state_dict of the rebuilt model
  torchkeras-io diff before.h5 after.h5 --atol 1e-6  which weights differ, and by how much
  torchkeras-io verify model.h5                      same outputs as Keras, layer by layer?
  torchkeras-io COMMAND --help                       what a command does and does not support

"""

_CONVERT_HELP = """\
The output format comes from OUT's extension:
  .h5 / .hdf5      legacy Keras HDF5: a full model (architecture, weights, and the training
                   config and optimizer state unless --no-optimizer) when IN has an
                   architecture (--weights-only: a weights file), else a weights file from a
                   legacy weights file or from <layer>/<weight> names (what this command writes
                   for weights-only files)
  .keras           Keras 3 archive, as above (needs an IN with an architecture)
  .weights.h5      Keras 3 weights (needs an IN with an architecture: Keras 3 stores
                   variables by the model's structure, not by name)
  .safetensors     the torch state_dict of the model rebuilt from IN (torch names such as
  .pt .pth .bin    layers.dense.weight), or, for a weights-only IN (or with --keras-names), the
                   file's weights as stored, under Keras names <layer>/<weight> (kernel:0 -> kernel)

What is not possible here: safetensors / state_dict files with torch names -> Keras. Mapping
torch names to Keras layers needs the module's Python code, which this tool never imports. In
Python: module.load_state_dict(torch.load(...)); torchkeras_io.save_weights(module, "out.h5").

examples:
  torchkeras-io convert model.h5 model.safetensors     # torch names, loads with load_state_dict
  torchkeras-io convert weights.h5 weights.safetensors # Keras names, converts back to .h5
  torchkeras-io convert model.h5 model.keras
"""

_VERIFY_HELP = """\
Loads FILE in torchkeras_io and in Keras (tf_keras for Keras 2 files, Keras 3 for Keras 3 files
under --keras auto; Keras 3 runs on its torch backend), feeds both the same seeded random batch
(normal floats; token ids below the vocabulary size for inputs that feed an Embedding; unknown
dimensions such as sequence length take --unknown-dim) and prints, for every layer, the largest
absolute and relative difference of its output (relative: max|torch - keras| / max|keras|), then
the same for the model's outputs. Passes (exit 0) when every model output is within --rtol.
Without any Keras installed (and --keras auto) it only checks that the model loads and runs.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchkeras-io``."""
    p = argparse.ArgumentParser(
        prog="torchkeras-io",
        description=textwrap.fill(
            "Inspect, convert, compare and verify Keras checkpoint files (legacy .h5, "
            ".keras, .weights.h5), safetensors and PyTorch state_dict files, without writing "
            "any Python.",
            96,
        ),  # fmt: skip
        epilog=_EXAMPLES + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("inspect", help="format, Keras version, layers and weights, training config, optimizer",
                       description=textwrap.fill("Show what a checkpoint file holds: its format and Keras version, every layer "
                       "with its weights' names, shapes, dtypes and sizes, the training config and a summary of "
                       "the optimizer state. Needs no model code.", 96), epilog=_EPILOG, formatter_class=raw)  # fmt: skip
    s.add_argument("file", help="a .h5, .keras, .weights.h5, .safetensors or torch state_dict file")
    s.add_argument("--json", action="store_true", help="print one JSON object instead (stable keys, for scripts)")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("convert", help="convert between formats, chosen by the output file's extension",
                       description=_CONVERT_HELP, epilog=_EPILOG, formatter_class=raw)  # fmt: skip
    s.add_argument("input", metavar="IN")
    s.add_argument("output", metavar="OUT")
    s.add_argument("-f", "--force", action="store_true", help="replace OUT if it exists")
    s.add_argument("--weights-only", action="store_true", help=".h5 output: write a weights file, not a full model")
    s.add_argument("--keras-names", action="store_true",
                   help="safetensors/state_dict output: the file's weights as stored, named <layer>/<weight>, even "
                   "when IN has an architecture")  # fmt: skip
    s.add_argument("--no-optimizer", action="store_true",
                   help="full-model output: leave the training config and optimizer state out")  # fmt: skip
    s.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("diff", help="compare two weight files layer by layer",
                       description=textwrap.fill("Compare the weights of two files, matched by layer name and then by weight "
                       "name (by position where names differ, as in Keras 3 files). Reports weights only in A or "
                       "only in B, shape mismatches and the largest absolute and relative difference (relative to "
                       "max|B|). Exit 0 when every weight is within --atol + --rtol * max|B| (default: exactly "
                       "equal), 1 otherwise. Layers without weights (Input, Flatten) are skipped; torch-only state that "
                       "Keras has no slot for (num_batches_tracked) on one side only is listed but is no "
                       "difference.", 96), epilog=_EPILOG, formatter_class=raw)  # fmt: skip
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    s.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    s.add_argument("--rtol", type=float, default=0.0, help="tolerance relative to max|B| per weight (default 0)")
    s.add_argument("--all", action="store_true", help="list identical weights too")
    s.add_argument("--json", action="store_true", help="print one JSON object instead")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("verify", help="run the model in torchkeras_io and in Keras; per-layer differences",
                       description=_VERIFY_HELP, epilog=_EPILOG, formatter_class=raw)  # fmt: skip
    s.add_argument("file", metavar="FILE", help="a Keras full-model file")
    s.add_argument("--keras", choices=("auto", "tf_keras", "keras3"), default="auto",
                   help="the reference implementation (default auto: by the file's Keras version)")  # fmt: skip
    s.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the outputs (default 1e-5; "
                   "recurrent models may need 1e-4)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="random seed of the batch (default 0)")
    s.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    s.add_argument("--unknown-dim", type=int, default=8, help="size of unknown non-batch dimensions (default 8)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead")
    s.set_defaults(func=cmd_verify)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``torchkeras-io`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TorchKerasIOWarning)
            code = args.func(args)
        if not getattr(args, "quiet", False):
            for w in caught:
                if issubclass(w.category, TorchKerasIOWarning):
                    print(f"torchkeras-io: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        return code
    except BrokenPipeError:  # output piped into `head`: not an error of the file
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_USAGE
    except (TorchKerasIOError, OSError) as exc:
        if args.debug:
            raise
        _error(_one_line(exc))
        return EXIT_BAD_FILE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and not isinstance(exc, TorchKerasIOError):
        where = f"'{exc.filename}': " if exc.filename else ""
        text = f"{where}{exc.strerror or text}"
    return text


def _error(message: str) -> None:
    print(f"torchkeras-io: error: {textwrap.shorten(message, 2000)}", file=sys.stderr)
