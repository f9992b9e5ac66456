"""The layer registry: which adapter, builder and exporter handles which module or Keras class.

The family modules (one per layer family) register here as they are imported, and
:mod:`torchkeras_io._layers` imports every family, so these tables are complete once the package is.

* :data:`ADAPTERS` (``@adapts``): the weights both ways; :func:`adapter_for` finds a module's.
* :data:`BUILDERS` (``@builds``): Keras class name -> builder of the equivalent torch module. A
  builder gets the layer's normalised config and its input shapes (Keras layout, batch axis
  first, ``None`` where unknown) and returns a :class:`Built`.
* :data:`EXPORTERS` (``@exports``) and :data:`FUNCTION_EXPORTERS` (``@exports_function``,
  ``@exports_method``): torch module classes, functions and tensor methods -> the Keras layers
  computing them (the torch.fx export, :mod:`torchkeras_io._graph.export`).

A target of an optional library is registered by its qualified name (a string), so that nothing
is imported to register it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from torch import nn

from torchkeras_io._layers.base import Adapter
from torchkeras_io._layers.generic import GenericAdapter
from torchkeras_io.errors import UnsupportedLayerError

# ----------------------------------------------------------------------------- weights
#: one instance of each family adapter; their ``match`` never overlap, so the order only decides speed
ADAPTERS: list = []
#: any other module owning tensors keeps them under their torch names
GENERIC = GenericAdapter()


def adapts(cls: type) -> type:
    """Class decorator: register an instance of this adapter."""
    ADAPTERS.append(cls())
    return cls


def adapter_for(module: nn.Module) -> Optional[Adapter]:
    """The registered adapter matching ``module``, else :data:`GENERIC` when the module owns tensors
    itself, else None (a container)."""
    for adapter in ADAPTERS:
        if adapter.match(module):
            return adapter
    return GENERIC if GENERIC.match(module) else None


# ----------------------------------------------------------------------------- config -> torch
@dataclasses.dataclass
class Built:
    """A torch module standing for one Keras layer.

    ``layout``: what the module's forward expects: ``"cl"`` the Keras layout itself, ``"cf"``
    channels-first (the Keras last axis moved to position 1, as torch convolutions want), or
    ``"any"`` (element-wise: the layout it gets is the layout it returns).
    ``weights``: the path, relative to ``module``, of the submodule holding the Keras layer's
    weights ("" for the module itself, None for a layer without weights).
    ``out_layout``: the layout of the outputs when it differs from the input's.
    ``mask``: how the layer treats Keras masks (from ``Embedding(mask_zero=True)``, ``Masking``):
    ``"drop"`` ignores them, ``"pass"`` passes its input's mask on, ``"consume"`` gets it as a
    ``mask=`` argument, ``"compute"`` makes one; the last two call ``module.compute_mask(x, mask)``
    when the module has it, for the mask of their outputs.
    """

    module: nn.Module
    layout: str = "cl"
    weights: Optional[str] = None
    out_layout: Optional[str] = None
    mask: str = "drop"


@dataclasses.dataclass
class BuildContext:
    generation: int  # 1, 2 or 3: the Keras generation whose semantics the config follows
    custom_objects: dict
    safe_mode: bool
    filepath: Optional[str] = None
    #: ``build_nested(entry, name, in_shapes) -> Built``: how the graph builder builds a layer given
    #: whole inside another's config (TimeDistributed's ``layer`` entry: a registered class or a
    #: model), named ``name``; set by :mod:`torchkeras_io._graph.build`, which builders may not import
    build_nested: Optional[Callable[[dict, str, list], Built]] = None


Builder = Callable[[Any, list, BuildContext], Built]
BUILDERS: dict = {}


def builds(*class_names: str):
    """Register a builder for these Keras class names."""

    def deco(fn: Builder) -> Builder:
        for name in class_names:
            BUILDERS[name] = fn
        return fn

    return deco


def unsupported(layer, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{layer.class_name} '{layer.name}': {why}", layer=layer.name)


def cfg_int_tuple(value, rank: int) -> tuple:
    """Keras accepts an int or a list for kernel_size, strides, …"""
    if isinstance(value, (list, tuple)):
        if len(value) != rank:
            raise ValueError(f"expected {rank} values, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value),) * rank


# ----------------------------------------------------------------------------- torch -> config
#: torch module class -> exporter. An exporter gets the export context, the fx node, the module
#: and its input Keras tensors, and adds the Keras layers computing the module (see _graph/export.py).
EXPORTERS: dict = {}


def exports(*module_types):
    """Register an exporter for these torch module classes (subclasses match too); a class of a
    library that may be absent by its ``module.QualName`` string
    (``"torchvision.models.swin_transformer.ShiftedWindowAttention"``), so nothing is imported."""

    def deco(fn):
        for t in module_types:
            EXPORTERS[t] = fn
        return fn

    return deco


@dataclasses.dataclass
class WeightSource:
    """A Keras layer's weights: sub-layer ``index`` of ``module`` through ``adapter``."""

    keras_name: str
    module: nn.Module
    adapter: object
    index: int
    ctx: Optional[dict]


#: methods that decide what a module computes: a subclass that overrides one computes something else
#: (a BatchNorm applying an activation, a Conv2d padding TF-style at run time), so it is not its parent
BEHAVIOUR_METHODS = ("forward", "_conv_forward", "_output_padding")


def computes_like(cls: type, base: type) -> bool:
    """Whether instances of ``cls`` (a subclass of ``base``) run ``base``'s own forward code."""
    return all(getattr(cls, m, None) is getattr(base, m, None) for m in BEHAVIOUR_METHODS)


def exporter_for(module: nn.Module):
    """The exporter registered for the module's class or the nearest base class whose forward it keeps.

    A subclass that overrides ``forward`` (or ``_conv_forward``) has none, unless its exporter
    says it knows the subclass (``exporter.accepts(module)``): fx then traces into it.
    """
    cls = type(module)
    for base in cls.__mro__:
        key = base if base in EXPORTERS else f"{base.__module__}.{base.__qualname__}"  # or registered by name
        if key in EXPORTERS:
            fn = EXPORTERS[key]
            if base is cls or computes_like(cls, base) or getattr(fn, "accepts", lambda m: False)(module):
                return fn
            return None
    return None


#: torch function (``F.max_pool2d``, ``torch.split``, ...) -> exporter ``fn(ctx, node, args, kwargs, value)``,
#: consulted by ``_export_op`` before its built-in table
FUNCTION_EXPORTERS: dict = {}


def exports_function(*functions):
    """Register an exporter for calls of these torch functions (call_function nodes); a function of
    a library that may be absent by its ``module.name`` string, so nothing is imported."""

    def deco(fn):
        for f in functions:
            FUNCTION_EXPORTERS[("name", f) if isinstance(f, str) else f] = fn
        return fn

    return deco


def function_exporter(target):
    try:
        found = FUNCTION_EXPORTERS.get(target)
    except TypeError:  # an unhashable target
        return None
    if found is None and callable(target):  # functions of optional libraries, registered by name (never imported)
        qualified = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
        found = FUNCTION_EXPORTERS.get(("name", qualified))
    return found


def exports_method(*names: str):
    """Register an exporter for calls of these tensor methods (call_method nodes: ``x.split(...)``)."""

    def deco(fn):
        for n in names:
            FUNCTION_EXPORTERS[("method", n)] = fn
        return fn

    return deco
