"""The adapter registry: the one place that knows which adapter handles which module."""

from __future__ import annotations

from torch import nn

# register their config builders, and the exporters of torch functions and slicing
from . import applications, core, functional, merge, ops, pooling, reshaping, slicing  # noqa: F401
from .activation import PReLUAdapter
from .attention import EinsumMultiHeadAttentionAdapter, MultiheadAttentionAdapter, SwinAttentionAdapter
from .base import Adapter, FileInfo, KerasLayer, direct_tensors
from .conv import ConvAdapter, ConvTransposeAdapter, SeparableConvAdapter
from .dense import DenseAdapter
from .embedding import EmbeddingAdapter
from .generic import GenericAdapter
from .norm import BatchNormAdapter, GroupNormAdapter, LayerNormAdapter
from .recurrent import RecurrentAdapter

ADAPTERS: list = [
    DenseAdapter(),
    ConvAdapter(),
    ConvTransposeAdapter(),
    SeparableConvAdapter(),
    BatchNormAdapter(),
    LayerNormAdapter(),
    GroupNormAdapter(),
    EmbeddingAdapter(),
    PReLUAdapter(),
    RecurrentAdapter(),
    MultiheadAttentionAdapter(),
    EinsumMultiHeadAttentionAdapter(),
    SwinAttentionAdapter(),
]
GENERIC = GenericAdapter()


def adapter_for(module: nn.Module) -> Adapter:
    """The first registered adapter that matches ``module``, else the generic one."""
    for adapter in ADAPTERS:
        if adapter.match(module):
            return adapter
    return GENERIC


__all__ = ["ADAPTERS", "GENERIC", "Adapter", "FileInfo", "KerasLayer", "adapter_for", "direct_tensors"]
