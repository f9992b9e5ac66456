"""A reader's layers -> a planned module's tensors: pair, fit, apply.

The semantic half of loading, format-free: which file layer goes to which Keras layer of the
module (by position, by name, or by Keras 3's store path), whether its weights fit (after the
adapter normalizes an older layout), and reading them into the torch tensors all or nothing.
The bytes half (opening a file, a layer's lazy tensors) is the reader's.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from torchkeras_io._checkpoint.progress import progress_bar
from torchkeras_io._engine.plan import Slot
from torchkeras_io._formats.legacy_h5 import TOP_LEVEL
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.keras3 import keras_snake, layer_entries, to_keras3
from torchkeras_io._keras.order import layer_order
from torchkeras_io._layers.base import FileInfo
from torchkeras_io._tensors import Transfer
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning, WeightMismatchError


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A layer that was not loaded because the file's weights do not fit it."""

    layer: str
    weight: str  # the Keras weight name, or "<count>" when the number of weights differs
    file_shape: tuple
    module_shape: tuple

    def __str__(self) -> str:
        if self.weight == "<count>":
            return f"{self.layer}: file has {self.file_shape[0]} weight(s), module expects {self.module_shape[0]}"
        return f"{self.layer}/{self.weight}: file {self.file_shape} vs module {self.module_shape}"


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_weights` did, in the spirit of ``nn.Module.load_state_dict``'s result.

    ``loaded``: module layers that received weights. ``missing``: module layers the file does
    not have (left untouched). ``unexpected``: file layers with weights that were not used.
    ``mismatched``: weights whose count or shape did not fit (their layers were left untouched).
    """

    filepath: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)

    @property
    def all_loaded(self) -> bool:
        """True when every layer of the module was loaded and nothing in the file was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        head = (
            f"LoadReport('{self.filepath}'): {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"
        )
        rows = [("layer", "status", "detail")]
        rows += [(name, "loaded", "") for name in self.loaded]
        rows += [
            (
                m.layer,
                "mismatched",
                str(m).split(": ", 1)[-1]
                if m.weight == "<count>"
                else f"{m.weight}: file {m.file_shape} vs module {m.module_shape}",
            )
            for m in self.mismatched
        ]
        rows += [(name, "missing", "not in file; left as it was") for name in self.missing]
        rows += [(name, "unexpected", "in file; not used") for name in self.unexpected]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def check_module(module) -> None:
    """Refuse what has no tensors to save or load yet: a non-module, or an uninitialized Lazy module."""
    if not isinstance(module, nn.Module):
        raise TorchKerasIOError(f"expected an nn.Module, got {type(module).__name__}")
    for name, p in module.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise TorchKerasIOError(f"parameter '{name}' is uninitialized (a Lazy module): run one forward pass first")


# ------------------------------------------------------------------------------ Keras 3 paths
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
        names = module.keras_layer_names(flatten=False)
        paths = [by_name.get(names.get(s.path, "")) for s in slots]
        if None not in paths:
            return paths
    namer = Namer()
    return [f"layers/{namer(s.layer.class_name)}" for s in slots]


def store_path_order(layers: dict, slots: Sequence, module=None) -> list:
    """The paths of a Keras 3 store's ``{path: file layer}`` in the order loading pairs them.

    When the store's weighted paths are exactly the ones Keras 3 gives the module's layers, they
    come in the module's order: loading in order is then Keras 3's own loading by path. Else the
    file's order stands."""
    paths = list(layers)
    expected = slot_paths(slots, module)
    weighted = {p for p, layer in layers.items() if layer.weights}
    if weighted == set(expected):
        paths = expected + [p for p in paths if p not in set(expected)]
    return paths


# ------------------------------------------------------------------------------------- pairing
def _swaps(expected: list, found: list, file_layers: dict) -> str:
    """The first few layers that positional pairing gives another layer's weights, with their shapes."""
    out = []
    for want, got in zip(expected, found):
        if want != got and len(out) < 3:
            a = [tuple(w.shape) for w in file_layers[want].weights] if want in file_layers else None
            b = [tuple(w.shape) for w in file_layers[got].weights]
            same = "same shapes: a silent swap" if a == b else f"shapes {b} for {a}"
            out.append(f"'{want}' would get the weights of '{got}' ({same})")
    return "; ".join(out)


def check_keras_pairing(module: nn.Module, store, file_layers: dict, filepath: str, by_name: bool = True) -> dict:
    """Warn about a file that Keras would load into the wrong layers; the file's layers, by name.

    tf-keras and Keras 3 pair a legacy file's weight groups with ``model.layers`` by position, and
    ``model.layers`` of a model rebuilt from a config is Keras's own depth sort of the graph
    (:mod:`._keras.order`). Keras always writes ``layer_names`` in that order; a file written in
    another order (older torchkeras_io versions wrote their configs' order) loads with weights in
    the wrong layers (shape errors, or same-shaped layers silently swapped). Our load pairs by name.
    A ``.keras`` archive pairs by store path (``layers/conv2d_1``), numbered in that same order; an
    archive we wrote numbered in another order still names each layer in its store, and is read
    by those names. ``store``: the Keras 3 store's ``{path: object}``, None for a legacy file."""
    if store is not None:
        return _renamed_by_store(store, file_layers, filepath)
    config = getattr(module, "keras_config", None)
    if not isinstance(config, dict):
        return file_layers
    found = [name for name, layer in file_layers.items() if layer.weights]
    try:
        expected = [name for name in layer_order(config, "tf_keras") if name in set(found)]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
        return file_layers  # a config Keras cannot rebuild: the builder has already said so, or will
    if expected == found or set(expected) != set(found):
        return file_layers
    warnings.warn(
        f"{filepath}: Keras pairs this file's weight groups with its layers by position, in an order the "
        f"file does not follow, so tf-keras and Keras 3 would load it wrongly: "
        f"{_swaps(expected, found, file_layers)}. "
        + (
            "torchkeras_io loads it by name (correctly)"
            if by_name
            else "This load pairs them in the module's own order"
        )
        + "; save it again with torchkeras_io.save_model for a file Keras loads",
        TorchKerasIOWarning,
        stacklevel=5,
    )
    return file_layers


def _renamed_by_store(store: dict, file_layers: dict, filepath: str) -> dict:
    """A Keras 3 store whose layers carry the names their writer gave them (ours do), where Keras 3's
    path numbering gives some of them another layer's name: warn, and use the stored names."""
    stored = {}
    for name, layer in file_layers.items():
        path = layer.attrs.get("v3_path")
        own = store.get(path) if path is not None else None
        stored[name] = own.name if own is not None and own.name else None
    weighted = [name for name, layer in file_layers.items() if layer.weights]
    moved = [name for name in weighted if stored[name] not in (None, name)]
    if not moved or None in (stored[n] for n in weighted) or {stored[n] for n in weighted} != set(weighted):
        return file_layers  # names missing, or not a reordering of the same layers: nothing to go on
    shapes = {name: [tuple(w.shape) for w in file_layers[name].weights] for name in weighted}
    detail = "; ".join(
        f"'{n}' would get the weights saved for '{stored[n]}' "
        f"({'same shapes: a silent swap' if shapes[n] == shapes[stored[n]] else 'other shapes'})"
        for n in moved[:3]
    )
    warnings.warn(
        f"{filepath}: Keras 3 pairs this archive's weights with its layers by store path, numbered in an "
        f"order the file does not follow, so Keras 3 would load it wrongly: {detail}. torchkeras_io "
        "loads it by the names stored with the weights; save it again with torchkeras_io.save_model for "
        "a file Keras 3 loads",
        TorchKerasIOWarning,
        stacklevel=6,
    )
    out = {}
    for name, layer in file_layers.items():
        new = stored[name] if name in set(weighted) else name
        out[new] = dataclasses.replace(layer, name=new)
    return out


def pair(slots, file_layers: dict, by_name: bool, report: LoadReport, filepath: str) -> list:
    """``[(slot, file layer)]``: by Keras layer name (the others go to ``report``), or in order."""
    weighted = [layer for layer in file_layers.values() if layer.weights]
    if by_name:
        used = set()
        pairs = []
        for slot in slots:
            # module paths have dots; Keras 3 layer names can't (exported models use '_')
            layer = file_layers.get(slot.name) or file_layers.get(slot.name.replace(".", "_"))
            if layer is None or not layer.weights:
                report.missing.append(slot.name)
            else:
                pairs.append((slot, layer))
                used.add(layer.name)
        report.unexpected.extend(layer.name for layer in weighted if layer.name not in used)
        return pairs
    if len(weighted) != len(slots):
        raise WeightMismatchError(
            f"layer count mismatch: the module has {len(slots)} layers with weights "
            f"({', '.join(s.name for s in slots[:8])}{', …' if len(slots) > 8 else ''}), the file has "
            f"{len(weighted)} ({', '.join(x.name for x in weighted[:8])}{', …' if len(weighted) > 8 else ''}). "
            "Use by_name=True to load matching layers only",
            filepath=filepath,
        )
    names = [s.name.replace(".", "_") for s in slots]
    found = [layer.name.replace(".", "_") for layer in weighted]
    if names != found and sorted(names) == sorted(found):
        # the file names exactly the module's layers, in another order: pairing by position would put
        # one layer's weights into another (silently, where shapes agree)
        by_key = {layer.name.replace(".", "_"): layer for layer in weighted}
        raise WeightMismatchError(
            f"the file holds the module's layers in another order, so pairing them by position would load "
            f"{_swaps(names, found, by_key)}. Use by_name=True to pair them by name",
            filepath=filepath,
        )
    return list(zip(slots, weighted))


# ------------------------------------------------------------------------------ fit and apply
def fit(slot: Slot, file_layer, info: FileInfo, reshape: bool) -> tuple:
    """(canonical weights ready to load or None, the layer's extras, mismatches). Reads no tensor data."""
    weights, extras = slot.adapter.normalize(
        slot.module, slot.index, list(file_layer.weights), dict(file_layer.extras), info
    )
    spec = slot.layer.weights
    if len(weights) != len(spec):
        return None, extras, [Mismatch(slot.name, "<count>", (len(weights),), (len(spec),))]
    fitted, bad = [], []
    for have, want in zip(weights, spec):
        if have.shape == want.shape:
            fitted.append(have)
        elif reshape and have.numel() == want.numel():
            fitted.append(have.map(lambda a, s=want.shape: a.reshape(s), want.shape))
        else:
            bad.append(Mismatch(slot.name, want.name, have.shape, want.shape))
    return (None if bad else fitted), extras, bad


def target(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor ``name`` (a dotted path an adapter gives) of ``module``."""
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    t = getattr(owner, attr, None)
    if not isinstance(t, torch.Tensor):  # pragma: no cover - adapters name existing tensors
        raise TorchKerasIOError(f"module has no tensor '{name}'")
    return t


def load_layers(
    slots: list,
    top: Optional[Slot],
    reader,
    file_layers: dict,
    info: FileInfo,
    *,
    by_name: bool,
    skip_mismatch: bool,
    reshape: bool,
    allow_nonfinite: bool,
    progress: Optional[bool],
    assign: Optional[Assign] = None,
) -> LoadReport:
    """Pair ``file_layers`` (and the ``reader``'s top-level weights) with the planned module, fit
    every weight, then read them all into the module, or leave it as it was. ``assign``: read
    into new tensors instead, swapped into the module once every read succeeded."""
    filepath = info.filepath
    report = LoadReport(filepath)
    pairs = pair(slots, file_layers, by_name, report, filepath)
    file_top = reader.top_level()
    if top is not None and file_top is not None and file_top.weights:
        pairs.append((top, file_top))
    elif top is not None:
        report.missing.append(top.name)
    elif file_top is not None and file_top.weights:
        if not by_name:
            raise WeightMismatchError(
                f"the file has {len(file_top.weights)} top-level model weight(s) and the module has none",
                filepath=filepath,
                layer=TOP_LEVEL,
            )
        report.unexpected.append(TOP_LEVEL)

    assignments = []
    for slot, file_layer in pairs:
        fitted, extras, bad = fit(slot, file_layer, info, reshape)
        if bad:
            if not skip_mismatch:
                m = bad[0]
                raise WeightMismatchError(
                    f"{m} (file layer '{file_layer.name}', module '{slot.label}'). Pass skip_mismatch=True to "
                    "skip such layers"
                    + ("" if m.weight == "<count>" else ", or reshape=True if only the shape differs"),
                    filepath=filepath,
                    layer=slot.name,
                    weight=None if m.weight == "<count>" else m.weight,
                )
            warnings.warn(
                f"{filepath}: skipping layer '{slot.name}': " + "; ".join(map(str, bad)),
                TorchKerasIOWarning,
                stacklevel=5,
            )
            report.mismatched.extend(bad)
            continue
        for name, lazy in slot.adapter.load(slot.module, slot.index, fitted, extras).items():
            tensor = target(slot.module, name)
            if tuple(tensor.shape) != lazy.shape:
                raise WeightMismatchError(
                    f"converted shape {lazy.shape} does not fit torch tensor '{name}' {tuple(tensor.shape)}",
                    filepath=filepath,
                    layer=slot.name,
                )
            if assign is not None:
                tensor = assign.target(slot.module, name, tensor)
            assignments.append((tensor, lazy, slot.name))
        report.loaded.append(slot.name)

    total = sum(x.numel() * x.dtype.itemsize for _, x, _ in assignments)
    if assign is not None:
        assign.check(filepath)
    # materialising: the buffers count against the load's whole footprint, so they stay small
    transfer = Transfer() if assign is None else Transfer.within(total)
    bar = progress_bar(progress, total, "load_weights")
    try:
        with torch.no_grad(), transfer:
            apply(assignments, transfer, allow_nonfinite, filepath, bar.update)
    finally:
        bar.close()
    if assign is not None:
        assign.swap()
    return report


class MetaTensorsLeft(TorchKerasIOError):
    """``assign=True`` would leave tensors on the meta device: raised before anything is read."""


class Assign:
    """``load_weights(assign=True)``: the module's tensors replaced by new ones read from the
    file, as ``load_state_dict(assign=True)`` does; nothing in the module changes before every
    read succeeded. New tensors go to ``device``, else where the old one lives (CPU for a tensor
    on the ``meta`` device). Tied tensors stay tied."""

    def __init__(self, module: nn.Module, device=None) -> None:
        self.module = module
        self.device = None if device is None else torch.device(device)
        self.new: dict = {}  # id(old tensor) -> (old, new)
        self.slots: list = []  # (owner module, attribute, old tensor)

    def target(self, module: nn.Module, name: str, old: torch.Tensor) -> torch.Tensor:
        """The new tensor the file's value for ``module``'s tensor ``name`` goes into."""
        owner_path, _, attr = name.rpartition(".")
        self.slots.append((module.get_submodule(owner_path) if owner_path else module, attr, old))
        if id(old) not in self.new:
            device = self.device or (old.device if old.device.type != "meta" else torch.device("cpu"))
            self.new[id(old)] = (old, torch.empty(old.shape, dtype=old.dtype, device=device))
        return self.new[id(old)][1]

    def check(self, filepath: str) -> None:
        """Refuse, before any read, a module that would keep tensors on the meta device."""
        tensors = [
            *self.module.named_parameters(remove_duplicate=False),
            *self.module.named_buffers(remove_duplicate=False),
        ]
        left = [n for n, t in tensors if t is not None and t.device.type == "meta" and id(t) not in self.new]
        if left:
            raise MetaTensorsLeft(
                f"assign=True: the file gives no value to {len(left)} tensor(s) on the meta device "
                f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})",
                filepath=filepath,
            )

    def swap(self) -> None:
        params: dict = {}
        for owner, attr, old in self.slots:
            new = self.new[id(old)][1]
            if isinstance(old, nn.Parameter):
                if id(old) not in params:
                    params[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad)
                new = params[id(old)]
            setattr(owner, attr, new)


def apply(assignments: list, transfer: Transfer, allow_nonfinite: bool, filepath: str, advance=None) -> None:
    """Read every weight into its tensor: all of the file or nothing.

    A weight whose read could still fail on the file's contents (compressed or filtered data, a
    value computed from several stored tensors, a NaN/Inf check) is read once to prove it, and
    dropped, before the module changes: stored data block by block through the transfer buffer,
    a computed value into a scratch tensor of its own. Plain storage whose place in the file was
    checked up front (``prechecked``) cannot fail on the file's contents and is read once. So
    extra memory stays a block (or one computed tensor), never a copy of the model, at the cost
    of reading those weights twice; only an I/O error of the disk itself could interrupt the
    second pass."""
    for tensor, lazy, layer in assignments:
        if allow_nonfinite and _prechecked(lazy):
            continue

        def check(values: torch.Tensor, lazy=lazy, layer=layer) -> None:
            if not allow_nonfinite and values.is_floating_point() and not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                raise FileFormatError(
                    f"{bad} NaN/Inf value(s) and allow_nonfinite=False",
                    filepath=filepath,
                    layer=layer,
                    weight=lazy.name,
                )

        if not lazy.scan(check, transfer):
            trial = torch.empty_like(tensor)
            lazy.read_into(trial, transfer)
            check(trial)
            del trial
    for tensor, lazy, _ in assignments:
        lazy.read_into(tensor, transfer)
        if advance is not None:
            advance(lazy.numel() * lazy.dtype.itemsize)


def _prechecked(lazy) -> bool:
    return lazy.prechecked()
