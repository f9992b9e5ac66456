"""Keras spatial reshaping: ZeroPadding, Cropping, UpSampling (1D/2D/3D)."""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.registry import Built, builds, exports, unsupported
from torchkeras_io.modules import Cropping


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


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
def _export_zero_pad(ctx, node, module, args, kwargs, value):
    if float(getattr(module, "value", 0.0)) != 0.0:
        raise ctx.fail("constant padding with a non-zero value")
    x = ctx.as_channels_last(args[0])
    rank = x.rank - 2
    flat = list(module.padding)
    if len(flat) != 2 * rank or any(p < 0 for p in flat):
        raise ctx.fail("padding that is not (begin, end) per spatial axis, or negative")
    pairs = [[flat[2 * i], flat[2 * i + 1]] for i in reversed(range(rank))]  # torch lists the last axis first
    return ctx.add1(f"ZeroPadding{rank}D", {"padding": pairs if rank > 1 else pairs[0], "data_format": "channels_last"}
                    if rank > 1 else {"padding": pairs[0]}, x, tuple(value.shape), x.perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.Upsample)
def _export_upsample(ctx, node, module, args, kwargs, value):
    x = ctx.as_channels_last(args[0])
    rank = x.rank - 2
    sizes = [o // i for o, i in zip(value.shape[2:], x.shape[2:])]
    if any(o != i * s for o, i, s in zip(value.shape[2:], x.shape[2:], sizes)):
        raise ctx.fail("upsampling by a non-integer factor")
    mode = module.mode
    if mode == "bilinear" and rank == 2 and not module.align_corners:
        interpolation = "bilinear"
    elif mode == "nearest":
        interpolation = "nearest"
    else:
        raise ctx.fail(f"upsampling mode '{mode}' (align_corners={module.align_corners})")
    if rank == 1:
        return ctx.add1("UpSampling1D", {"size": sizes[0]}, x, tuple(value.shape), x.perm, name=ctx.layer_name(node))
    cfg = {"size": sizes, "data_format": "channels_last"}
    if rank == 2:
        cfg["interpolation"] = interpolation
    elif interpolation != "nearest":
        raise ctx.fail("UpSampling3D is nearest-neighbour only")
    return ctx.add1(f"UpSampling{rank}D", cfg, x, tuple(value.shape), x.perm, name=ctx.layer_name(node))
