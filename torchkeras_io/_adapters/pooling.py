"""Keras pooling: Max/AveragePooling1D/2D/3D and the global poolings.

'same' pooling follows TensorFlow: the extra padding goes to the end, max pooling never picks a
pad, and averages count only real elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import GlobalPool, same_padding
from .registry import Built, builds, cfg_int_tuple

_POOL = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d), 3: (F.max_pool3d, F.avg_pool3d)}


class Pool(nn.Module):
    """Max or average pooling of channels-first input with Keras 'valid' / 'same' semantics."""

    def __init__(self, mode: str, pool_size, strides, padding: str):
        super().__init__()
        self.mode, self.pool_size, self.strides, self.padding = mode, tuple(pool_size), tuple(strides), padding

    def forward(self, x, **kwargs):
        rank = len(self.pool_size)
        max_fn, avg_fn = _POOL[rank]
        if self.padding == "valid":
            if self.mode == "max":
                return max_fn(x, self.pool_size, self.strides)
            return avg_fn(x, self.pool_size, self.strides)
        pads = []
        for i in reversed(range(rank)):
            pads += same_padding(x.shape[2 + i], self.pool_size[i], self.strides[i])
        if self.mode == "max":
            x = F.pad(x, pads, value=float("-inf")) if any(pads) else x
            return max_fn(x, self.pool_size, self.strides)
        if not any(pads):
            return avg_fn(x, self.pool_size, self.strides)
        total = avg_fn(F.pad(x, pads), self.pool_size, self.strides)
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        count = avg_fn(F.pad(ones, pads), self.pool_size, self.strides)
        return total / count  # the mean over the real (unpadded) elements, as TensorFlow computes it

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, pool_size={self.pool_size}, strides={self.strides}, padding={self.padding!r}"


def _layout(cfg: dict) -> str:
    return "cl" if cfg.get("data_format") == "channels_first" else "cf"


@builds("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
        "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D")  # fmt: skip
def _pool(layer, in_shapes, ctx):
    c = layer.config
    rank = len(in_shapes[0]) - 2
    size = cfg_int_tuple(c.get("pool_size", 2), rank)
    strides = c.get("strides") or size
    strides = cfg_int_tuple(strides, rank)
    mode = "max" if layer.class_name.startswith("Max") else "avg"
    return Built(Pool(mode, size, strides, str(c.get("padding", "valid")).lower()), _layout(c))


@builds("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalAvgPool3D",
        "GlobalMaxPool1D", "GlobalMaxPool2D", "GlobalMaxPool3D")  # fmt: skip
def _global_pool(layer, in_shapes, ctx):
    mode = "max" if "Max" in layer.class_name else "avg"
    return Built(GlobalPool(mode, bool(layer.config.get("keepdims", False))), _layout(layer.config))
