"""Keras spatial reshaping: ZeroPadding, Cropping, UpSampling (1D/2D/3D)."""

from __future__ import annotations

from torch import nn

from ..modules import Cropping
from .registry import Built, builds, unsupported


def _pairs(value, rank: int) -> list:
    """Keras padding/cropping argument -> [(begin, end)] per spatial axis."""
    if isinstance(value, int):
        return [(value, value)] * rank
    value = list(value)
    if rank == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(value[0], value[1])]
    out = []
    for v in value:
        out.append((v, v) if isinstance(v, int) else (int(v[0]), int(v[1])))
    if len(out) != rank:
        raise ValueError(f"expected {rank} (begin, end) pairs, got {value!r}")
    return out


def _layout(cfg: dict) -> str:
    return "cl" if cfg.get("data_format") == "channels_first" else "cf"


@builds("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def _zero_pad(layer, in_shapes, ctx):
    rank = len(in_shapes[0]) - 2
    pairs = _pairs(layer.config.get("padding", 1), rank)
    flat = [p for pair in reversed(pairs) for p in pair]  # torch: last axis first
    cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[rank]
    return Built(cls(tuple(flat), 0.0), _layout(layer.config))


@builds("Cropping1D", "Cropping2D", "Cropping3D")
def _crop(layer, in_shapes, ctx):
    rank = len(in_shapes[0]) - 2
    return Built(Cropping(_pairs(layer.config.get("cropping", 1), rank)), _layout(layer.config))


class _Repeat(nn.Module):
    """UpSampling1D: each step repeated ``size`` times along the time axis (Keras layout)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, x, **kwargs):
        return x.repeat_interleave(self.size, dim=1)


@builds("UpSampling1D")
def _up1d(layer, in_shapes, ctx):
    return Built(_Repeat(layer.config.get("size", layer.config.get("length", 2))), "cl")


@builds("UpSampling2D", "UpSampling3D")
def _upsample(layer, in_shapes, ctx):
    rank = len(in_shapes[0]) - 2
    size = layer.config.get("size", 2)
    size = tuple(int(s) for s in size) if isinstance(size, (list, tuple)) else (int(size),) * rank
    mode = str(layer.config.get("interpolation", "nearest"))
    if mode not in ("nearest", "bilinear"):
        raise unsupported(layer, f"interpolation '{mode}'")
    if mode == "bilinear":  # tf.image.resize(half_pixel_centers=True) == torch align_corners=False
        return Built(nn.Upsample(scale_factor=size, mode="bilinear", align_corners=False), _layout(layer.config))
    return Built(nn.Upsample(scale_factor=size, mode="nearest"), _layout(layer.config))
