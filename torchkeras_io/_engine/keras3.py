"""Layers <-> the Keras 3 variable store: where each Keras layer's weights go in a ``.weights.h5``.

The glue between the plan of a torch module (:mod:`._plan`, Keras layers in legacy weight
order), the per-family var-path table (:mod:`._adapters.v3vars`) and the store bytes
(:mod:`._v3format`). Keras 3 addresses a layer by the snake-case name of its class, made unique
in order of appearance (``layers/dense``, ``layers/dense_1``; nested models
``layers/sequential/layers/dense``), never by ``layer.name``; loading matches by these paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Iterable, Optional, Sequence

import h5py
import numpy as np
import torch

from torchkeras_io._engine.optim import TORCH_GROUP, keras_variables, restore_training, save_training
from torchkeras_io._engine.plan import plan
from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._formats.keras3 import (
    ORDER_ATTR,
    KerasArchive,
    StoreObject,
    is_v3_store,
    metadata,
    read_sharded_index,
    read_store,
    sniff,
    write_archive,
    write_sharded,
    write_store,
)
from torchkeras_io._formats.legacy_h5 import FileLayer, WeightsReader, load_attributes, save_attributes
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.keras3 import keras3_unreadable, keras_snake, layer_entries, legal_names, to_keras3
from torchkeras_io._keras.order import in_keras_order
from torchkeras_io._layers.v3vars import groups_for, infer_groups, split
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, UnsupportedLayerError, WeightMismatchError

TOP_LEVEL = "top_level_model_weights"
KERAS3_VERSION = "3.15.1"  # the Keras 3 dialect our .keras files follow


class Namer:
    """Keras's ``_get_unique_name`` for the layers of one model: ``dense``, ``dense_1``, …"""

    def __init__(self) -> None:
        self.used: dict = {}

    def __call__(self, class_name: str) -> str:
        base = keras_snake(class_name)
        n = self.used.get(base, 0)
        self.used[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


def slot_paths(slots: Sequence, module=None) -> list:
    """The store path of each planned slot: from the Keras config of a model built from one
    (``module``), else as a flat Keras model of the same layers names it."""
    if isinstance(module, KerasGraph) and module.keras_config is not None:
        by_name = {name: path for path, name, _, _ in layer_entries(to_keras3(module.keras_config))}
        names = flat_layer_names(module)
        paths = [by_name.get(names.get(s.path, "")) for s in slots]
        if None not in paths:
            return paths
    namer = Namer()
    return [f"layers/{namer(s.layer.class_name)}" for s in slots]


def layer_objects(path: str, class_name: str, name: Optional[str], weights: Sequence, extras: Iterable = (),
                  inner: Optional[str] = None) -> list:  # fmt: skip
    """The store objects of one Keras layer at ``path`` (its own ``vars`` always, even when empty)."""
    groups = groups_for(class_name, inner)
    try:
        parts = split(groups, list(weights), name or path)
    except ValueError as exc:
        raise WeightMismatchError(str(exc), layer=name or path) from exc
    own = StoreObject(path, name, [], {e.name: e for e in extras})
    objects = [own]
    for g, ws in parts:
        if g == "":
            own.vars = ws
        else:
            objects.append(StoreObject(f"{path}/{g}", None, ws, {}))
    return objects


def module_objects(slots: Sequence, top) -> tuple:
    """(store objects, layer paths) for ``save_weights`` of a planned module."""
    objects = [StoreObject("", None, list(top.layer.weights) if top is not None else [], {})]
    paths = slot_paths(slots)
    for path, s in zip(paths, slots):
        objects += layer_objects(path, s.layer.class_name, s.name, s.layer.weights, s.layer.extras)
    return objects, paths


def write_module_weights(f: h5py.Group, slots: Sequence, top, module=None) -> None:
    """Write the store of a planned module; a model built from a Keras config (``module``) is
    written at the paths its config gives, so that Keras 3 reads it into the same architecture."""
    if isinstance(module, KerasGraph) and module.keras_config is not None:
        objects, _ = config_objects(module, to_keras3(module.keras_config), None)
        write_store(f, objects, [o.path for o in objects if o.path])
        return
    objects, paths = module_objects(slots, top)
    write_store(f, objects, paths)


def write_module_shards(filepath: str, slots: Sequence, top, max_shard_size: float, overwrite: bool) -> None:
    """Keras 3's sharded form: ``<stem>.weights.json`` and ``<stem>_00000.weights.h5``, …"""
    objects, paths = module_objects(slots, top)
    write_sharded(filepath, objects, paths, int(max_shard_size * 1024**3), overwrite)


# -------------------------------------------------------------------------------------- reading
def _layer_paths(objects: dict) -> list:
    """Every layer path in the store: ``layers/<x>`` at the root or inside a nested model's path."""
    found = set()
    for path in objects:
        segs = path.split("/") if path else []
        for i in range(1, len(segs)):
            if segs[i - 1] == "layers":
                prefix = "/".join(segs[: i - 1])
                if prefix == "" or prefix in found:
                    found.add("/".join(segs[: i + 1]))
    models = {p for p in found if any(q.startswith(f"{p}/layers/") for q in found)}
    return [p for p in found if p not in models]


def _natural(path: str) -> list:
    """Sort key keeping Keras's numbering in order: ``dense``, ``dense_1``, ``dense_2``, ``dense_10``."""
    key = []
    for seg in path.split("/"):
        m = re.fullmatch(r"(.*?)(?:_(\d+))?", seg)
        key.append((m.group(1), int(m.group(2)) if m.group(2) else -1))
    return key


class V3WeightsReader:
    """A Keras 3 variable store seen through :class:`WeightsReader`'s interface.

    Each leaf layer becomes a :class:`FileLayer` whose weights are its legacy-ordered list (the
    concatenation of its groups, :mod:`._adapters.v3vars`). Layers are named by their ``vars``
    ``name`` attribute (or ``names``, from a config), else by path. With ``slots`` and matching
    paths, layers come in the module's order, so loading in order is Keras 3's loading by path.
    """

    def __init__(self, filepath: str, files: Sequence[h5py.File], *, slots: Optional[Sequence] = None,
                 names: Optional[dict] = None, order: Sequence[str] = (), keras_version: str = "3",
                 closers: Sequence = (), module=None) -> None:  # fmt: skip
        self.filepath = filepath
        self.keras_version = keras_version
        self.backend = None
        self._closers = list(closers)
        order = list(order)
        objects = read_store(list(files), filepath)
        for f in files:
            if ORDER_ATTR in f.attrs and not order:
                try:
                    order = json.loads(f.attrs[ORDER_ATTR])
                except (TypeError, ValueError) as exc:
                    raise FileFormatError(f"unreadable attribute '{ORDER_ATTR}': {exc}", filepath=filepath) from exc
        self.objects = objects
        paths = sorted(_layer_paths(objects), key=_natural)
        if isinstance(order, list) and set(order) >= set(paths) and all(isinstance(p, str) for p in order):
            paths = [p for p in order if p in set(paths)]
        self.layers = {p: self._assemble(p, (names or {}).get(p)) for p in paths}
        if slots is not None:
            expected = slot_paths(slots, module)
            weighted = {p for p, fl in self.layers.items() if fl.weights}
            if weighted == set(expected):  # Keras 3's own rule: match by path
                paths = expected + [p for p in paths if p not in set(expected)]
        by_name: dict = {}
        for p in paths:
            by_name.setdefault(self.layers[p].name, []).append(p)
        self.layer_names = []
        self._by_name = {}
        for p in paths:
            fl = self.layers[p]
            if len(by_name[fl.name]) > 1:  # names must be unique: fall back to paths
                fl.name = p
            self.layer_names.append(fl.name)
            self._by_name[fl.name] = fl

    def _assemble(self, path: str, name: Optional[str]) -> FileLayer:
        own = self.objects.get(path)
        prefix = f"{path}/"
        present = {"" if p == path else p[len(prefix) :] for p, o in self.objects.items()
                   if o.vars and (p == path or p.startswith(prefix)) and "/layers/" not in "/" + p[len(prefix):]}  # fmt: skip
        weights = []
        if present:
            for g in infer_groups(present):
                obj = self.objects[f"{path}/{g}" if g else path]
                weights += [w.renamed(f"{g}/{w.name}" if g else w.name) for w in obj.vars]
        label = name or (own.name if own is not None else None) or path
        return FileLayer(label, weights, dict(own.extras) if own is not None else {}, {"v3_path": path})

    def layer(self, name: str) -> FileLayer:
        return self._by_name[name]

    def top_level(self) -> Optional[FileLayer]:
        root = self.objects.get("")
        if root is None or not root.vars:
            return None
        return FileLayer(TOP_LEVEL, list(root.vars), dict(root.extras), {})

    def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                c.close()
        self._closers = []

    def __enter__(self) -> V3WeightsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_h5(filepath: str) -> h5py.File:
    try:
        return h5py.File(filepath, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", filepath=filepath) from exc


def open_weights(filepath: os.PathLike | str, slots: Optional[Sequence] = None, names: Optional[dict] = None,
                 module=None):  # fmt: skip
    """A reader for any Keras weights file, told apart by its bytes, not its name: legacy HDF5
    (weights-only or full model), a Keras 3 ``.weights.h5`` store, a ``.keras`` ZIP (its
    ``model.weights.h5``), or a sharded ``.weights.json`` index."""
    filepath = os.fspath(filepath)
    kind = sniff(filepath)
    if kind == "zip":
        archive = KerasArchive(filepath)
        try:
            version = (
                str(archive.json("metadata.json").get("keras_version", "3")) if archive.has("metadata.json") else "3"
            )
            entries = layer_entries(archive.json("config.json")) if archive.has("config.json") else []
            names = {**{p: n for p, n, _, _ in entries if isinstance(n, str)}, **(names or {})}
            return V3WeightsReader(filepath, [archive.weights()], slots=slots, names=names,
                                   order=[p for p, *_ in entries], keras_version=version, closers=[archive],
                                   module=module)  # fmt: skip
        except BaseException:
            archive.close()
            raise
    if kind == "json":
        opened = []
        try:
            for shard in read_sharded_index(filepath):
                opened.append(_open_h5(shard))
            return V3WeightsReader(filepath, opened, slots=slots, names=names, closers=opened, module=module)
        except BaseException:
            for f in opened:
                f.close()
            raise
    if kind == "hdf5":
        f = _open_h5(filepath)
        try:
            v3 = is_v3_store(f)
        except BaseException:
            f.close()
            raise
        if v3:
            try:
                return V3WeightsReader(filepath, [f], slots=slots, names=names, closers=[f], module=module)
            except BaseException:
                f.close()
                raise
        f.close()
    return WeightsReader(filepath)  # legacy layout, or its error for a file that is none of these


# ------------------------------------------------------------------------------- whole models
def flat_layer_names(graph, prefix: str = "") -> dict:
    """``{module path: Keras name}`` of a built Keras model, nested models' layers one by one
    (Keras 3 stores them at their own paths, not as one flattened group)."""
    out = {}
    for key, rel in graph._weights.items():
        path = f"{prefix}layers.{key}" + (f".{rel}" if rel else "")
        sub = graph.layers[key]
        if isinstance(sub, KerasGraph) and not rel:
            out.update(flat_layer_names(sub, f"{prefix}layers.{key}."))
        else:
            out[path] = graph._names[key]
    return out


def _layers_by_name(module, config: dict, sources) -> dict:
    if sources is None:  # a model built from a Keras config: its own layer names
        slots, _ = plan(module, flat_layer_names(module))
        return {s.name: s.layer for s in slots}
    return {src.keras_name: src.adapter.export(src.module, src.ctx)[src.index] for src in sources}


def config_objects(module, config3: dict, sources, filepath=None, renamed: Optional[dict] = None) -> tuple:
    """(store objects, ``[(layer name, weights)]`` in Keras order) of a module and its Keras 3 config:
    every layer at the path Keras 3 gives it, wrappers (TimeDistributed) and nested models included.
    ``renamed``: ``{module's layer name: its name in config3}`` (:func:`legal_names`)."""
    weights = {(renamed or {}).get(k, k): v for k, v in _layers_by_name(module, config3, sources).items()}
    objects = [StoreObject("", config3.get("config", {}).get("name"), [], {})]
    ordered = []
    for path, name, cls, inner in layer_entries(config3):
        layer = weights.pop(name, None)
        if layer is not None:
            ordered.append((name, layer.weights))
        objects += layer_objects(path, cls, name, layer.weights if layer else [], layer.extras if layer else (), inner)
    if weights:
        raise WeightMismatchError(f"weights for layers missing from the config: {sorted(weights)}", filepath=filepath)
    return objects, ordered


def _compile_config(training: dict) -> dict:
    """Keras 3's ``compile_config`` from the tf-keras ``training_config`` our legacy writer makes."""
    oc = training.get("optimizer_config") or {}
    kname = str(oc.get("class_name", "")).removeprefix("Custom>")
    cfg = {k: v for k, v in (oc.get("config") or {}).items() if k not in ("jit_compile", "is_legacy_optimizer")}
    cfg["name"] = keras_snake(kname)
    return {
        "optimizer": {"module": "keras.optimizers", "class_name": kname, "config": cfg, "registered_name": None},
        "loss": training.get("loss"),
        "loss_weights": None,
        "metrics": training.get("metrics"),
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": False,
    }


def save_keras_model(module, filepath, config: dict, sources, *, optimizer=None, loss=None, metrics=None,
                     scheduler=None, include_optimizer: bool = True, overwrite: bool = True,
                     origins: Optional[dict] = None) -> None:  # fmt: skip
    """Write ``module`` as a Keras 3 ``.keras`` archive (config in the Keras 3 dialect, weights at
    Keras 3's paths; with an optimizer, ``compile_config`` and ``optimizer/vars``). The config is
    rebuilt and every weight fitted before anything is written (``origins``: where each Keras layer
    comes from, for the error when one does not fit)."""
    from torchkeras_io.saving import prove_rebuilds  # saving imports this module

    # Keras 3 forbids tf-keras's '/' in names ("conv1/conv"): the file names such layers anew, in
    # its config and in its store alike (the layers' paths do not change)
    config3, renamed = legal_names(to_keras3(config))
    unreadable = keras3_unreadable(config3)
    if unreadable:  # our loader rebuilds these, Keras 3 does not: the proof below would pass them
        name, cls, function = unreadable[0]
        what = f"{cls} '{function}'" if function else cls
        raise UnsupportedLayerError(
            f"Keras 3 cannot deserialize layer '{name}' ({what}): keras.ops has no equivalent for it"
            + (f" (and {len(unreadable) - 1} more such layers)" if len(unreadable) > 1 else "")
            + "; save the model under an '.h5' name for tf-keras instead; nothing was written",
            layer=name, filepath=filepath)  # fmt: skip
    origins = {renamed.get(k, k): v for k, v in (origins or {}).items()}
    # listed as Keras 3 rebuilds model.layers (a fixed point): the store paths below, numbered in
    # this order, are the ones Keras 3 gives each layer, so same-class siblings are never swapped
    config3, _ = in_keras_order(config3, "keras3")
    objects, ordered = config_objects(module, config3, sources, filepath, renamed)
    # never write a file that does not load: rebuild the Keras 3 config and fit every weight first
    prove_rebuilds(config3, ordered, filepath, keras_version=KERAS3_VERSION, flavor="keras3", origins=origins)
    training = None
    with (
        atomic_write_path(filepath, overwrite=overwrite) as tmp,
        tempfile.TemporaryDirectory(dir=os.path.dirname(tmp)) as tmpdir,
    ):
        h5path = os.path.join(tmpdir, "model.weights.h5")
        with h5py.File(h5path, "w") as f:
            write_store(f, objects)
            if optimizer is not None:
                # the legacy writer's records, reused: its training_config and slots become Keras 3's
                # compile_config and optimizer/vars; its torch record sits where Keras never looks
                with h5py.File(os.path.join(tmpdir, "legacy.h5"), "w", driver="core", backing_store=False) as mem:
                    save_training(mem, keras_variables(ordered), optimizer, loss, metrics, scheduler,
                                  include_optimizer)  # fmt: skip
                    training = json.loads(mem.attrs["training_config"]) if "training_config" in mem.attrs else None
                    if training is not None and include_optimizer and "optimizer_weights" in mem:
                        _write_optimizer_vars(f, mem, training, optimizer)
                    if TORCH_GROUP in mem:
                        mem.copy(mem[TORCH_GROUP], f, TORCH_GROUP)
            elif loss is not None or metrics:
                save_training(f, [], None, loss, metrics, None, False)  # warns: Keras compiles only with an optimizer
        if training is not None:
            config3["compile_config"] = _compile_config(training)
        write_archive(tmp, config3, metadata(KERAS3_VERSION), h5path)


def _write_optimizer_vars(f: h5py.File, mem: h5py.File, training: dict, optimizer) -> None:
    """``optimizer/vars``: iteration, learning_rate, then the slots (tf-keras 2.11 var-major order,
    which is Keras 3's), and for Nadam Keras 3's trailing ``u_product`` (torch's ``mu_product``)."""
    og = mem["optimizer_weights"]
    names = load_attributes(og, "weight_names", "<memory>") or []
    values = [og[n][()] for n in names]
    cfg = (training.get("optimizer_config") or {}).get("config") or {}
    lr = cfg.get("learning_rate")
    if not values or isinstance(lr, dict) or lr is None:
        return
    out = [np.asarray(values[0], dtype=np.int64), np.asarray(lr, dtype=np.float32)] + list(values[1:])
    if isinstance(optimizer, torch.optim.NAdam):
        products = [float(st["mu_product"]) for st in optimizer.state.values() if "mu_product" in st]
        out.append(np.asarray(products[0] if products else 1.0, dtype=np.float32))
    group = f.require_group("optimizer/vars")
    group.attrs["name"] = keras_snake(
        str((training.get("optimizer_config") or {}).get("class_name", "")).removeprefix("Custom>")
    )
    for i, v in enumerate(out):
        group.create_dataset(str(i), data=v)


def load_keras_model(filepath: str, *, custom_objects=None, compile: bool = True, device=None, safe_mode: bool = True,
                     allow_nonfinite: bool = True):  # fmt: skip
    """A ``.keras`` archive (Keras 3, or tf-keras 2.13+) as a :class:`torchkeras_io.Model`."""
    from torchkeras_io.models import _build
    from torchkeras_io.weights import load_weights

    with KerasArchive(filepath) as archive:
        config = archive.json("config.json")
        meta = archive.json("metadata.json") if archive.has("metadata.json") else {}
        version = str(meta.get("keras_version", "3"))
        try:
            model = _build(config, version, custom_objects, safe_mode, filepath)
        except TorchKerasIOError as exc:
            if exc.filepath is None:
                exc.filepath = filepath
                exc.layer = exc.layer or "config.json"
                exc.args = (exc._format(),)
            raise
        names = flat_layer_names(model.module)
        report = load_weights(model.module, filepath, by_name=True, layer_names=names, device=device,
                              allow_nonfinite=allow_nonfinite)  # fmt: skip
        if report.missing or report.unexpected:
            raise WeightMismatchError(
                f"the file's weights do not match its own model config: layers without weights in the file "
                f"{report.missing}, weights in the file for no layer {report.unexpected}", filepath=filepath)  # fmt: skip
        cc = config.get("compile_config")
        if compile and isinstance(cc, dict) and isinstance(cc.get("optimizer"), dict):
            order = {name: i for i, (_, name, _, _) in enumerate(layer_entries(config))}
            slots, _ = plan(model.module, names)
            slots = sorted(slots, key=lambda s: order.get(s.name, len(order)))
            training = {"loss": cc.get("loss"), "metrics": cc.get("metrics"),
                        "optimizer_config": {k: cc["optimizer"].get(k) for k in ("class_name", "config")}}  # fmt: skip
            with h5py.File(f"{filepath}.optimizer", "w", driver="core", backing_store=False) as mem:
                _optimizer_as_legacy(archive.weights(), mem, filepath)
                frozen_too = TORCH_GROUP in mem
                kvars = keras_variables([(s.name, s.layer.weights) for s in slots], frozen_too=frozen_too)
                restored = restore_training(mem, filepath, json.dumps(training), kvars, device, version, model.module)
            model.optimizer, model.loss, model.metrics = restored.optimizer, restored.loss, restored.metrics
            if restored.scheduler is not None:
                model.scheduler = restored.scheduler
    model.eval()
    return model


def _optimizer_as_legacy(store: h5py.File, mem: h5py.File, filepath: str) -> None:
    """Keras 3's ``optimizer/vars`` (and our torch record) as the legacy ``optimizer_weights`` group
    that :mod:`._optim` reads: iteration, learning_rate, then the slots (Keras 3 layout)."""
    objects = read_store(store, filepath)
    opt = objects.get("optimizer")
    if opt is not None and opt.vars:
        group = mem.create_group("optimizer_weights")
        names = [f"{opt.name or 'optimizer'}/{n}" for n in ("iteration", "learning_rate")]
        names += [f"{opt.name or 'optimizer'}/slot_{i}" for i in range(2, len(opt.vars))]
        save_attributes(group, "weight_names", names[: len(opt.vars)])
        for name, lazy in zip(names, opt.vars):
            group.create_dataset(name, data=lazy.read().numpy())
    if TORCH_GROUP in store:
        store.copy(store[TORCH_GROUP], mem, TORCH_GROUP)
