"""Keras pooling: Max/AveragePooling1D/2D/3D and the global poolings.

'same' pooling follows TensorFlow: the extra padding goes to the end, max pooling never picks a
pad, and averages count only real elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import GlobalPool, same_padding
from .registry import Built, builds, cfg_int_tuple, exports

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
    keepdims = bool(layer.config.get("keepdims", False))
    if mode == "avg" and len(in_shapes[0]) == 3:  # the one global pooling that uses Keras masks
        return Built(MaskedGlobalAverage1D(mode, keepdims), _layout(layer.config), mask="consume")
    return Built(GlobalPool(mode, keepdims), _layout(layer.config))


class MaskedGlobalAverage1D(GlobalPool):
    """GlobalAveragePooling1D of channels-first input: with a Keras mask, the mean over unmasked steps."""

    def forward(self, x, mask=None, **kwargs):
        if mask is None:
            return super().forward(x)
        m = mask.to(x.dtype).unsqueeze(1)
        return (x * m).sum(dim=2, keepdim=self.keepdims) / m.sum(dim=2, keepdim=self.keepdims)


# ------------------------------------------------------------------------------- torch -> config
def _export_window(ctx, x, module, rank, kind, name, value):
    k = cfg_int_tuple(module.kernel_size, rank)
    s = cfg_int_tuple(module.stride if module.stride is not None else module.kernel_size, rank)
    p = cfg_int_tuple(module.padding, rank)
    d = cfg_int_tuple(getattr(module, "dilation", 1), rank)
    if any(di != 1 for di in d):
        raise ctx.fail("dilated pooling has no Keras layer")
    sizes = [x.shape[2 + i] for i in range(rank)]
    torch_out = list(value.shape[2:])
    tf_same = [-(-n // si) for n, si in zip(sizes, s)]
    same_left = [same_padding(n, ki, si)[0] for n, ki, si in zip(sizes, k, s)]
    valid_out = [(n - ki) // si + 1 for n, ki, si in zip(sizes, k, s)]
    include_pad = getattr(module, "count_include_pad", False)
    if not any(p) and torch_out == valid_out:
        padding = "valid"
    elif torch_out == tf_same and same_left == list(p) and (kind == "Max" or not include_pad or not any(p)):
        padding = "same"  # the same windows; averages exclude the padding in both
    elif kind == "Average" and include_pad and not getattr(module, "ceil_mode", False):
        pads = [[pi, pi] for pi in p]
        shape = tuple(x.shape[:2]) + tuple(n + 2 * pi for n, pi in zip(sizes, p))
        x = ctx.add1(f"ZeroPadding{rank}D", {"padding": pads if rank > 1 else pads[0]}, x, shape, x.perm,
                     name=f"{name}_pad")  # fmt: skip
        padding = "valid"
    else:
        raise ctx.fail(f"{type(module).__name__}(padding={module.padding}, ceil_mode="
                       f"{getattr(module, 'ceil_mode', False)}) has no Keras equivalent for this input size")  # fmt: skip
    cfg = {"pool_size": list(k), "strides": list(s), "padding": padding, "data_format": "channels_last"}
    return ctx.add1(f"{kind}Pooling{rank}D", cfg, x, tuple(value.shape), x.perm, name=name)


@exports(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _export_pool(ctx, node, module, args, kwargs, value):
    if getattr(module, "return_indices", False):
        raise ctx.fail("max pooling with return_indices")
    if getattr(module, "divisor_override", None):
        raise ctx.fail("average pooling with divisor_override")
    x = ctx.as_channels_last(args[0])
    kind = "Max" if "Max" in type(module).__name__ else "Average"
    return _export_window(ctx, x, module, x.rank - 2, kind, ctx.layer_name(node), value)


@exports(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
         nn.AdaptiveMaxPool3d)  # fmt: skip
def _export_adaptive(ctx, node, module, args, kwargs, value):
    size = module.output_size if isinstance(module.output_size, (list, tuple)) else [module.output_size]
    if any(s not in (1, None) for s in size) or getattr(module, "return_indices", False):
        raise ctx.fail("adaptive pooling to a size other than 1")
    x = ctx.as_channels_last(args[0])
    kind = "Max" if "Max" in type(module).__name__ else "Average"
    return ctx.add1(f"Global{kind}Pooling{x.rank - 2}D", {"keepdims": True, "data_format": "channels_last"}, x,
                    tuple(value.shape), x.perm, name=ctx.layer_name(node))  # fmt: skip
