"""What every layer adapter provides: both directions of the weight mapping for one family."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import nn

from torchkeras_io._tensors import Lazy


@dataclasses.dataclass
class KerasLayer:
    """The Keras view of (part of) a torch module: class, weights in Keras order, torch extras."""

    class_name: str
    weights: list  # of Lazy named relative to the layer ("kernel", "lstm_cell/kernel")
    extras: list = dataclasses.field(default_factory=list)  # of Lazy named by torch attribute
    #: names of weights Keras keeps as non-trainable (listed after the trainable ones when the
    #: layer sits inside a nested Keras model)
    non_trainable: tuple = ()


@dataclasses.dataclass
class FileInfo:
    """What an adapter may need to know about the file it reads from."""

    filepath: str
    keras_version: str
    backend: Optional[str]

    @property
    def is_keras1(self) -> bool:
        return self.keras_version == "1" or self.keras_version.startswith("1.")


def direct_tensors(module: nn.Module) -> dict:
    """The parameters and persistent buffers a module owns itself, by attribute name."""
    out = {name: p for name, p in module._parameters.items() if p is not None}
    skip = getattr(module, "_non_persistent_buffers_set", set())
    out.update((name, b) for name, b in module._buffers.items() if b is not None and name not in skip)
    return out


def owns_exactly(module: nn.Module, required: Sequence[str], optional: Sequence[str] = ()) -> bool:
    """True when the module's own tensors are ``required`` plus any subset of ``optional``."""
    names = set(direct_tensors(module))
    return set(required) <= names <= set(required) | set(optional)


class Adapter:
    """Base adapter. Subclasses register an instance with ``@adapts`` (:mod:`torchkeras_io._layers.registry`)."""

    family = "base"
    #: True when the adapter maps a whole subtree (e.g. MultiheadAttention and its out_proj)
    claims_children = False

    def match(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def export(self, module: nn.Module, ctx: Optional[dict] = None) -> list:
        """The Keras layers (usually one) holding this module's state, weights as lazy tensors."""
        raise NotImplementedError

    def normalize(self, module: nn.Module, index: int, weights: list, extras: dict, info: FileInfo):
        """Bring older Keras layouts (Keras 1, cuDNN, …) to the canonical one. Reads no data."""
        return weights, extras

    def load(self, module: nn.Module, index: int, weights: list, extras: dict) -> dict:
        """Map canonical Keras weights (lazy) of sub-layer ``index`` to ``{torch name: Lazy}``."""
        raise NotImplementedError


def lazy_param(module: nn.Module, name: str, keras_name: str, fn=None, shape=None) -> Lazy:
    return Lazy.of(keras_name, getattr(module, name), fn, shape)


def combine(name: str, shape, dtype: torch.dtype, parts: Sequence[Lazy], fn) -> Lazy:
    """A lazy tensor computed from several others."""
    return Lazy(name, shape, dtype, lambda: fn(*[p.read() for p in parts]))


def as_dict(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}
