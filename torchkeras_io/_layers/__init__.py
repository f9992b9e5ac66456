"""The adapter registry: the one place that knows which adapter handles which module."""

from __future__ import annotations

from torch import nn

# register their config builders, and the exporters of torch functions and slicing
from torchkeras_io._layers import applications, core, functional, merge, ops, pooling, reshaping, slicing  # noqa: F401
from torchkeras_io._layers.activation import PReLUAdapter
from torchkeras_io._layers.attention import (
    EinsumMultiHeadAttentionAdapter,
    MultiheadAttentionAdapter,
    SwinAttentionAdapter,
)
from torchkeras_io._layers.base import Adapter, FileInfo, KerasLayer, direct_tensors
from torchkeras_io._layers.conv import ConvAdapter, ConvTransposeAdapter, SeparableConvAdapter
from torchkeras_io._layers.dense import DenseAdapter
from torchkeras_io._layers.embedding import EmbeddingAdapter
from torchkeras_io._layers.generic import GenericAdapter
from torchkeras_io._layers.norm import BatchNormAdapter, GroupNormAdapter, LayerNormAdapter
from torchkeras_io._layers.recurrent import RecurrentAdapter

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
