"""Keras layer class -> builder of the equivalent torch module (the config direction).

Builders live in the family modules beside the weight adapters and register here by class
name. A builder gets the layer's normalised config and its input shapes (Keras layout, batch
axis first, ``None`` where unknown) and returns a :class:`Built`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from torch import nn

from torchkeras_io.errors import UnsupportedLayerError


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
#: and its input Keras tensors, and adds the Keras layers computing the module (see _export.py).
EXPORTERS: dict = {}


def exports(*module_types: type):
    """Register an exporter for these torch module classes (subclasses match too)."""

    def deco(fn):
        for t in module_types:
            EXPORTERS[t] = fn
        return fn

    return deco


def exports_named(*qualified_names: str):
    """Register an exporter for module classes of libraries that may be absent, by ``module.QualName``
    (``torchvision.models.swin_transformer.ShiftedWindowAttention``): nothing is imported."""

    def deco(fn):
        for name in qualified_names:
            EXPORTERS[name] = fn
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
        key = base if base in EXPORTERS else f"{base.__module__}.{base.__qualname__}"  # or by name: exports_named
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
    """Register an exporter for calls of these torch functions (call_function nodes)."""

    def deco(fn):
        for f in functions:
            FUNCTION_EXPORTERS[f] = fn
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


def exports_function_named(*qualified_names: str):
    """Register an exporter for functions of libraries that may be absent, by ``module.name``."""
    return exports_function(*[("name", n) for n in qualified_names])


def exports_method(*names: str):
    """Register an exporter for calls of these tensor methods (call_method nodes: ``x.split(...)``)."""
    return exports_function(*[("method", n) for n in names])
