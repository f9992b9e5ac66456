"""Which modules of a torch model are Keras layers, and what they are called.

Every module that owns parameters or persistent buffers is a layer (a recurrent module with
``num_layers=N`` is N layers), named by its qualified module path unless ``layer_names`` says
otherwise. A root module that no adapter knows keeps its own tensors in Keras's
``top_level_model_weights`` group, as a subclassed Keras model does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Union

from torch import nn

from torchkeras_io._formats.legacy_h5 import TOP_LEVEL, legal_layer_name
from torchkeras_io._keras.keras3 import keras_snake
from torchkeras_io._layers.base import Adapter, KerasLayer
from torchkeras_io._layers.nested import NestedAdapter
from torchkeras_io._layers.registry import GENERIC, adapter_for
from torchkeras_io.errors import TorchKerasIOError

LayerNames = Union[Mapping[str, Union[str, Sequence[str]]], Callable[[str], Union[str, Sequence[str], None]], None]


@dataclasses.dataclass
class Slot:
    """One Keras layer: (part of) a torch module, its adapter and its Keras view."""

    path: str
    module: nn.Module
    adapter: Adapter
    index: int
    name: str
    layer: KerasLayer

    @property
    def label(self) -> str:
        return self.path or type(self.module).__name__


def layer_modules(root: nn.Module, nested: frozenset = frozenset(), ctx: Optional[dict] = None):
    """(path, module, adapter) for every layer module, in registration (pre-)order.

    Containers whose path is in ``nested`` are one layer each: a nested Keras model.
    """
    seen = set()
    out = []

    def visit(path: str, module: nn.Module) -> None:
        if id(module) in seen:
            return  # a module registered twice is one layer, as in Keras
        seen.add(id(module))
        if path in nested:
            prefix = f"{path}." if path else ""
            parts = [
                (rel, m, a, k, layer)
                for rel, m, a in layer_modules(module)
                for k, layer in enumerate(a.export(m, (ctx or {}).get(prefix + rel)))
            ]
            out.append((path, module, NestedAdapter(parts)))
            return
        adapter = adapter_for(module)
        if adapter is not None:
            out.append((path, module, adapter))
        if adapter is None or not adapter.claims_children:
            for name, child in module.named_children():
                if child is not None:
                    visit(f"{path}.{name}" if path else name, child)

    visit("", root)
    return out


def _check_name(name, path: str) -> str:
    if not isinstance(name, str) or not name:
        raise TorchKerasIOError(f"layer_names gave {name!r} for module '{path}'; expected a non-empty string")
    if not legal_layer_name(name):
        raise TorchKerasIOError(
            f"layer name {name!r} for module '{path}' is not a Keras layer name: NUL, or a '/'-separated "
            "part that is empty, '.' or '..'"
        )
    return name


def plan(root: nn.Module, layer_names: LayerNames = None, ctx: Optional[dict] = None):
    """The layers of ``root`` as (slots, top-level slot or None)."""
    if layer_names is not None and not callable(layer_names) and not isinstance(layer_names, Mapping):
        raise TorchKerasIOError("layer_names must be a dict {module_path: keras_name} or a callable")
    nested = frozenset()
    if isinstance(layer_names, Mapping):
        known = {p for p, _, _ in layer_modules(root)}
        containers = {p for p, m in root.named_modules() if p not in known and layer_modules(m)}
        unknown = sorted(set(layer_names) - known - containers)
        if unknown:
            raise TorchKerasIOError(
                f"layer_names names modules that are not layers: {unknown}; layers are {sorted(known)[:20]}"
            )
        nested = frozenset(set(layer_names) & containers)
        inner = [p for p in layer_names if any(p != c and (c == "" or p.startswith(f"{c}.")) for c in nested)]
        if inner:
            raise TorchKerasIOError(f"layer_names maps {inner} inside a module mapped as a whole (nested model)")
    modules = layer_modules(root, nested, ctx)
    slots, top, used = [], None, {}
    for path, module, adapter in modules:
        given = layer_names(path) if callable(layer_names) else (layer_names or {}).get(path)
        layers = adapter.export(module, (ctx or {}).get(path))
        if path == "" and adapter is GENERIC and given is None:
            top = Slot("", module, adapter, 0, TOP_LEVEL, layers[0])
            continue
        base = given if given is not None else (path or keras_snake(type(module).__name__, split_digits=True))
        if isinstance(base, (list, tuple)):
            if len(base) != len(layers):
                raise TorchKerasIOError(
                    f"layer_names gives {len(base)} names for module '{path}', which is {len(layers)} Keras layers"
                )
            names = list(base)
        else:
            names = [base] if len(layers) == 1 else [f"{base}_l{k}" for k in range(len(layers))]
        for k, (name, layer) in enumerate(zip(names, layers)):
            _check_name(name, path)
            if name in used or name == TOP_LEVEL:
                raise TorchKerasIOError(
                    f"Keras layer name '{name}' is used twice (modules '{used.get(name)}' and '{path}')"
                )
            used[name] = path
            slots.append(Slot(path, module, adapter, k, name, layer))
    _check_nesting(used)
    return slots, top


def _check_nesting(used: dict) -> None:
    """A name with '/' is a group inside the group of each prefix. tf-keras has such pairs
    (MobileNetV3's ``Conv`` and ``Conv/BatchNorm``); they share no object as long as the inner
    group is not where the outer layer keeps its own datasets: ``<name>/<name>/…`` (weights are
    named after their layer) and ``<name>/__torch__``."""
    for name in used:
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix, rest = "/".join(parts[:i]), "/".join(parts[i:])
            clash = prefix == TOP_LEVEL or (
                prefix in used and any(rest == own or rest.startswith(f"{own}/") for own in (prefix, "__torch__"))
            )
            if clash:
                raise TorchKerasIOError(
                    f"Keras layer names '{prefix}' (module '{used.get(prefix)}') and '{name}' (module "
                    f"'{used[name]}') would share HDF5 groups"
                )
