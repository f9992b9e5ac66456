"""The Keras 3 "saving_lib" variable store (``.weights.h5``), its shards and ``.weights.json`` index.

Nothing here knows about layers (docs/keras_formats.md §8). A variable store is a tree of HDF5
groups; an object at path ``p`` keeps its variables as datasets ``p/vars/0``, ``p/vars/1``, …
(attribute ``name``: the Keras object's name). :func:`write_store` / :func:`read_store` write and
read ``{object path: [tensors]}``; :func:`write_sharded` / :func:`read_sharded_index` the sharded
form Keras >= 3.10 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Optional, Sequence

import h5py
from h5py import h5d, h5g

from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._formats.hdf5 import read_str_attr, resolve_id
from torchkeras_io._formats.hdf5_io import RawFile, Writer, dataset_lazy
from torchkeras_io._tensors import Transfer
from torchkeras_io.errors import FileFormatError

VARS = "vars"
NAME_ATTR = "name"
#: torch-only state (``num_batches_tracked``, torch's second RNN bias): a sibling of ``vars`` that
#: Keras never visits, since it only opens the ``vars`` groups of the objects it walks
EXTRAS = "torch_extras"
ORDER_ATTR = "torchkeras_io_layers"  # our files: the layer paths in module order
MAX_JSON_BYTES = 256 << 20
MAX_DEPTH = 64
MAX_OBJECTS = 1 << 20


@dataclasses.dataclass
class StoreObject:
    """One saveable object of a variable store: its ``vars`` datasets and torch extras."""

    path: str  # "" for the root object, else e.g. "layers/dense" or "layers/lstm/cell"
    name: Optional[str]
    vars: list  # of Lazy, in index order
    extras: dict  # torch name -> Lazy


def write_store(f: h5py.Group, objects: Sequence[StoreObject], order: Sequence[str] = ()) -> None:
    """Write objects at ``<path>/vars/<i>`` (attribute ``name``) and extras at ``<path>/torch_extras``.

    Every object gets a ``vars`` group, empty or not, as Keras writes; ``order`` is kept as a root
    attribute so that our own files remember the module's layer order.
    """
    # one writer and one set of block buffers for the whole store, as for the legacy layout
    with Transfer() as transfer, contextlib.closing(Writer(transfer)) as w:
        for obj in objects:
            group = f.require_group(f"{obj.path}/{VARS}" if obj.path else VARS)
            if obj.name is not None:
                group.attrs[NAME_ATTR] = obj.name
            for i, lazy in enumerate(obj.vars):
                w.dataset(group.id, str(i), lazy, {})
            if obj.extras:
                extras = f.require_group(f"{obj.path}/{EXTRAS}" if obj.path else EXTRAS)
                for name, lazy in obj.extras.items():
                    w.dataset(extras.id, name, lazy, {})
    if order:
        f.attrs[ORDER_ATTR] = json.dumps(list(order))


def read_store(files: h5py.File | Sequence[h5py.File], filepath: str) -> dict:
    """``{object path: StoreObject}`` for every ``vars`` group in the file(s) (hard links only).

    Several files are the shards of one store: Keras >= 3.10 may split one object's variables
    between shards (``vars/0`` in one, ``vars/1..3`` in the next), so they are merged by index.
    Keras 2.13–2.14 files keep layers under ``_layer_checkpoint_dependencies``; their paths are
    read as ``layers``, as Keras 3's ``H5IOStore`` does.
    """
    objects: dict = {}
    indexed: dict = {}  # path -> {var index: Lazy}
    for f in files if isinstance(files, (list, tuple)) else [files]:
        for path, (obj, found) in _read_one(f, filepath).items():
            have = indexed.setdefault(path, {})
            if set(have) & set(found) or (objects.get(path) and objects[path].extras and obj.extras):
                raise FileFormatError(f"object '{path}' appears in two shards", filepath=filepath, layer=path)
            have.update(found)
            prev = objects.setdefault(path, obj)
            prev.name = prev.name or obj.name
            prev.extras = prev.extras or obj.extras
    for path, obj in objects.items():
        found = indexed[path]
        if sorted(found) != list(range(len(found))):
            raise FileFormatError(f"the variables of '{path or '/'}' are not numbered 0..{len(found) - 1}: "
                                  f"{sorted(found)[:10]}", filepath=filepath, layer=path or "/")  # fmt: skip
        obj.vars = [found[i] for i in range(len(found))]
    return objects


def _read_one(f: h5py.File, filepath: str) -> dict:
    """``{object path: (StoreObject without vars, {var index: Lazy})}`` of one file."""
    out: dict = {}
    fid = f.id
    # plain on-disk files: contiguous variables are read at their offsets, checked up front
    raw = RawFile.of(f) if f.userblock_size == 0 else None

    def visit(gid, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FileFormatError(f"groups nested deeper than {MAX_DEPTH} at '{path}'", filepath=filepath)
        try:
            names = [n.decode("utf-8", "surrogateescape") for n in _names(gid)]
        except (OSError, RuntimeError, ValueError) as exc:
            raise FileFormatError(f"unreadable group '{path or '/'}': {exc}", filepath=filepath) from exc
        for name in names:
            if len(out) > MAX_OBJECTS:
                raise FileFormatError(f"more than {MAX_OBJECTS} objects", filepath=filepath)
            child = resolve_id(gid, name, filepath, path or "/")
            if not isinstance(child, h5g.GroupID):
                continue  # datasets are read by their vars / extras group
            logical = "layers" if name == "_layer_checkpoint_dependencies" else name
            sub = f"{path}/{logical}" if path else logical
            if name == VARS:
                obj, _ = out.setdefault(path, (StoreObject(path, None, [], {}), {}))
                out[path] = (obj, _vars(child, path, filepath, fid, raw))
                obj.name = read_str_attr(child, NAME_ATTR, filepath)
            elif name == EXTRAS:
                extras = {}
                for e in [n.decode("utf-8", "surrogateescape") for n in _names(child)]:
                    extras[e] = dataset_lazy(resolve_id(child, e, filepath, path), e, filepath, path, fid, raw)
                out.setdefault(path, (StoreObject(path, None, [], {}), {}))[0].extras = extras
            else:
                visit(child, sub, depth + 1)

    visit(f.id, "", 0)
    return out


def _names(gid) -> list:
    return [n.encode("utf-8", "surrogateescape") for n in h5py.Group(gid).keys()]


def _vars(gid, path: str, filepath: str, fid, raw: Optional[RawFile]) -> dict:
    names = [n.decode("utf-8", "surrogateescape") for n in _names(gid)]
    if not all(n.isdigit() and n == str(int(n)) for n in names):
        raise FileFormatError(f"the variables of '{path or '/'}' are not numbered: {sorted(names)[:10]}",
                              filepath=filepath, layer=path or "/")  # fmt: skip
    out = {}
    for n in names:
        dset = resolve_id(gid, n, filepath, path or "/")
        if not isinstance(dset, h5d.DatasetID):
            raise FileFormatError("variable entry is not a dataset", filepath=filepath, layer=path or "/", weight=n)
        out[int(n)] = dataset_lazy(dset, f"{VARS}/{n}", filepath, path or "/", fid, raw)
    return out


# ------------------------------------------------------------------------------------- shards
def _nbytes(obj: StoreObject) -> int:
    return sum(x.numel() * x.dtype.itemsize for x in list(obj.vars) + list(obj.extras.values()))


def write_sharded(filepath: str, objects: Sequence[StoreObject], order: Sequence[str], max_bytes: int,
                  overwrite: bool = True) -> None:  # fmt: skip
    """Keras 3's sharded store: objects packed in order into ``<stem>_<5 digits>.weights.h5`` files of
    at most ``max_bytes`` each (one object never spans shards), and the ``.weights.json`` index."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.json"):
        raise FileFormatError("a sharded weights index must be named '*.weights.json'", filepath=filepath)
    stem = os.path.basename(filepath)[: -len(".weights.json")]
    shards: list = [[]]
    size = 0
    for obj in objects:
        n = _nbytes(obj)
        if n > max_bytes:
            raise FileFormatError(
                f"object '{obj.path}' holds {n} bytes, more than max_shard_size ({max_bytes} bytes)",
                filepath=filepath,
                layer=obj.path,
            )
        if n and size + n > max_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(obj)
        size += n
    folder = os.path.dirname(os.path.abspath(filepath))
    weight_map, total = {}, 0
    for i, group in enumerate(shards):
        name = f"{stem}_{i:05d}.weights.h5"
        with atomic_write_path(os.path.join(folder, name), overwrite=overwrite) as tmp:
            with h5py.File(tmp, "w") as f:
                write_store(f, group, order if i == 0 else ())
        for obj in group:
            total += _nbytes(obj)
            if obj.vars or obj.extras:
                weight_map[f"/{obj.path}/{VARS}" if obj.path else f"/{VARS}"] = [name]
    index = {"metadata": {"total_size": float(total)}, "weight_map": weight_map}
    with atomic_write_path(filepath, overwrite=overwrite) as tmp:
        with open(tmp, "w") as fh:
            json.dump(index, fh, indent=4)


def read_sharded_index(filepath: str) -> dict:
    """``{object path: shard file}`` of a sharded ``.weights.json`` (Keras >= 3.10), paths checked."""
    try:
        with open(filepath, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise FileFormatError(f"larger than {MAX_JSON_BYTES} bytes", filepath=filepath)
        index = json.loads(data.decode("utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except FileFormatError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"not a Keras sharded weights index: {exc}", filepath=filepath) from exc
    out = {}
    folder = os.path.dirname(os.path.abspath(filepath))
    for obj, shards in weight_map.items():
        shards = shards if isinstance(shards, list) else [shards]
        for shard in shards:
            if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
                raise FileFormatError(f"unsafe shard name {shard!r} for '{obj}'", filepath=filepath, layer=str(obj))
            out.setdefault(os.path.join(folder, shard), []).append(obj)
    return out
