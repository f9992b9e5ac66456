"""Keras pooling: Max/AveragePooling1D/2D/3D and the global poolings.

'same' pooling follows TensorFlow: the extra padding goes to the end, max pooling never picks a
pad, and averages count only real elements.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._layers.registry import Built, builds, cfg_int_tuple, exports, exports_function
from torchkeras_io._layers.trace import KT
from torchkeras_io.modules import GlobalPool, same_padding

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
# Every value here is a channels-last Keras tensor ``x`` (KT) of a torch (N, C, *spatial) value.
# torch pooling semantics reproduced exactly, axis by axis (max and average pooling are separable:
# a window is a product of per-axis ranges and an average's divisor is a product of per-axis counts).

#: Keras layers whose output is >= 0 whatever their input, and layers that keep their input's sign
_NONNEG_ACTIVATIONS = {"relu", "relu6", "sigmoid", "softmax", "exponential", "softplus", "hard_sigmoid"}
_SIGN_KEEPING = re.compile(
    r"(MaxPooling|AveragePooling|GlobalMaxPooling|GlobalAveragePooling|Cropping|ZeroPadding|"
    r"UpSampling|SpatialDropout)[123]D|Permute|Flatten|Reshape|Dropout|Concatenate|Add|Multiply"
)


def is_nonnegative(ctx, x, depth: int = 0) -> bool:
    """Whether the Keras graph guarantees ``x >= 0`` (e.g. it comes from a ReLU), by its producers."""
    entry = ctx.layer_entry(x.ref[0])
    if entry is None or depth > 64:
        return False
    cls, cfg = entry["class_name"], entry["config"]
    if cls == "ReLU":
        return not cfg.get("negative_slope") and not cfg.get("alpha") and float(cfg.get("threshold") or 0.0) >= 0
    if cls == "Activation":
        return cfg.get("activation") in _NONNEG_ACTIVATIONS
    if cls == "Rescaling":
        return float(cfg.get("scale", 1.0)) >= 0 and float(cfg.get("offset", 0.0)) >= 0 and _inputs_nonneg(
            ctx, entry, x, depth)  # fmt: skip
    if _SIGN_KEEPING.fullmatch(cls):
        return _inputs_nonneg(ctx, entry, x, depth)
    return False


def _inputs_nonneg(ctx, entry, x, depth) -> bool:
    node = entry["inbound_nodes"][x.ref[1]]
    return bool(node) and all(is_nonnegative(ctx, KT((n[0], n[1], n[2]), (), (), x.dtype), depth + 1) for n in node)


def _spatial_cfg(rank: int, per_axis: list) -> dict:
    return {"cropping": per_axis if rank > 1 else per_axis[0]}


def crop_axes(ctx, x, spans: dict, name: str):
    """``x`` cut to ``spans`` = {torch axis: (start, stop)} along non-batch axes, with Cropping layers.

    CroppingND crops Keras axes 1..N with ``data_format="channels_last"`` and 2..N+1 with
    ``"channels_first"`` (plain slicing, valid on every device), so any non-batch axis can be cut
    in place; rank-2 and rank-3 values that need it get a trailing unit axis by Reshape first.
    """
    spans = {a % x.rank: (int(b), int(e)) for a, (b, e) in spans.items() if (b, e) != (0, x.shape[a % x.rank])}
    if not spans:
        return x
    if x.batch_axis in spans:
        raise ctx.fail("slicing the batch axis")
    shape = list(x.shape)
    for a, (b, e) in spans.items():
        if not 0 <= b < e <= x.shape[a]:
            raise ctx.fail(f"an empty or out-of-range slice {b}:{e} of an axis of length {x.shape[a]}")
        shape[a] = e - b
    keras_axes = {x.keras_axis(a): a for a in spans}
    r = x.rank
    if 3 <= r <= 5 and all(1 <= k <= r - 2 for k in keras_axes):
        fmt = "channels_last"
    elif 4 <= r <= 5 and all(2 <= k <= r - 1 for k in keras_axes):
        fmt = "channels_first"
    elif r <= 4 and x.batch_axis == x.perm[0]:
        # a trailing unit axis makes every non-batch axis croppable channels-last; Reshape does not move data
        kshape = list(x.keras_shape[1:])
        y = ctx.add1("Reshape", {"target_shape": kshape + [1]}, x, tuple(x.shape) + (1,), tuple(x.perm) + (r,),
                     name=f"{name}_unit")  # fmt: skip
        y = crop_axes(ctx, y, spans, name)
        return ctx.add1("Reshape", {"target_shape": list(y.keras_shape[1:-1])}, y, tuple(shape), x.perm,
                        name=f"{name}_squeeze")  # fmt: skip
    else:
        for a, span in spans.items():  # one axis at a time
            x = crop_axes(ctx, x, {a: span}, f"{name}_{a}")
        return x
    first = 1 if fmt == "channels_last" else 2
    per_axis = []
    for k in range(first, first + r - 2):
        a = x.perm[k]
        b, e = spans.get(a, (0, x.shape[a]))
        per_axis.append([b, x.shape[a] - e])
    cfg = _spatial_cfg(r - 2, per_axis)
    if r > 3:
        cfg["data_format"] = fmt
    return ctx.add1(f"Cropping{r - 2}D", cfg, x, tuple(shape), x.perm, name=name)


def _concat(ctx, pieces: list, torch_axis: int, shape: tuple, name: str):
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    return ctx.add("Concatenate", {"axis": first.keras_axis(torch_axis)}, pieces, [(shape, first.perm, first.dtype)],
                   name=name)[0]  # fmt: skip


def _pad_axis(ctx, x, axis: int, left: int, right: int, edge: bool, name: str):
    """``x`` padded along torch axis ``axis``: zeros, or copies of the edge elements (``edge``)."""
    if left < 0 or right < 0:
        x = crop_axes(ctx, x, {axis: (max(-left, 0), x.shape[axis] - max(-right, 0))}, f"{name}_crop")
        left, right = max(left, 0), max(right, 0)
    if not left and not right:
        return x
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis] = n + left + right
    if not edge:
        rank = x.rank - 2
        pads = [[left, right] if x.perm[1 + i] == axis else [0, 0] for i in range(rank)]  # Keras axis 1 + i
        cfg = {"padding": pads if rank > 1 else pads[0]}
        if rank > 1:
            cfg["data_format"] = "channels_last"
        return ctx.add1(f"ZeroPadding{rank}D", cfg, x, tuple(shape), x.perm, name=f"{name}_pad")
    pieces = []
    if left:
        pieces += [crop_axes(ctx, x, {axis: (0, 1)}, f"{name}_first")] * left
    pieces.append(x)
    if right:
        pieces += [crop_axes(ctx, x, {axis: (n - 1, n)}, f"{name}_last")] * right
    return _concat(ctx, pieces, axis, tuple(shape), f"{name}_edge")


def _pool_layer(ctx, x, kind: str, size: list, strides: list, out_shape: tuple, name: str):
    if all(k == 1 for k in size) and all(s == 1 for s in strides):
        return x
    rank = x.rank - 2
    cfg = {"pool_size": list(size), "strides": list(strides), "padding": "valid", "data_format": "channels_last"}
    return ctx.add1(f"{kind}Pooling{rank}D", cfg, x, tuple(out_shape), x.perm, name=name)


def _rescale_runs(ctx, x, axis: int, factors: list, name: str):
    """Multiply each position along ``axis`` by its factor (cut into runs of equal factor, rescaled, rejoined)."""
    if all(abs(f - 1.0) < 1e-12 for f in factors):
        return x
    pieces, start = [], 0
    for i in range(1, len(factors) + 1):
        if i == len(factors) or factors[i] != factors[start]:
            piece = crop_axes(ctx, x, {axis: (start, i)}, f"{name}_part{start}")
            if factors[start] != 1.0:
                piece = ctx.add1("Rescaling", {"scale": float(factors[start]), "offset": 0.0}, piece, piece.shape,
                                 piece.perm, name=f"{name}_scale{start}")  # fmt: skip
            pieces.append(piece)
            start = i
    return _concat(ctx, pieces, axis, tuple(x.shape), f"{name}_rejoin")


def export_window_pool(ctx, x, kind: str, kernel_size, stride, padding, dilation, ceil_mode: bool,
                       count_include_pad: bool, divisor_override, name: str, value):  # fmt: skip
    """torch max/avg pooling (any padding, ceil_mode, count_include_pad, divisor_override) in Keras layers.

    Max pooling pads with -inf in torch: where ``x`` is provably >= 0 zeros do the same, otherwise
    the edge elements are repeated (every torch window holds at least one real element, and one
    that reaches into the padding holds the edge element, so repeating it changes no maximum).
    Average pooling sums over zero padding and then rescales the border rows/columns whose torch
    divisor is not the window size (per axis, as the divisor is a product of per-axis counts).
    """
    x = ctx.as_channels_last(x)
    rank = x.rank - 2
    k = cfg_int_tuple(kernel_size, rank)
    s = cfg_int_tuple(stride if stride not in (None, [], ()) else kernel_size, rank)
    p = cfg_int_tuple(padding, rank)
    d = cfg_int_tuple(dilation, rank)
    if any(di != 1 for di in d):
        raise ctx.fail("dilated pooling has no Keras layer")
    sizes = [x.shape[2 + i] for i in range(rank)]
    out = list(value.shape[2:])
    out_shape = tuple(value.shape)
    if kind == "Average" and divisor_override:
        y = _pool_layer(ctx, _padded_for(ctx, x, k, s, p, out, False, name), "Average", k, s, out_shape, name)
        scale = math.prod(k) / float(divisor_override)
        return ctx.add1("Rescaling", {"scale": scale, "offset": 0.0}, y, out_shape, y.perm, name=f"{name}_divisor")
    tf_same = [-(-n // si) for n, si in zip(sizes, s)]
    same_left = [same_padding(n, ki, si)[0] for n, ki, si in zip(sizes, k, s)]
    valid_out = [(n - ki) // si + 1 if n >= ki else 0 for n, ki, si in zip(sizes, k, s)]
    if not any(p) and out == valid_out:
        return _pool_layer(ctx, x, kind, k, s, out_shape, name)
    if out == tf_same and same_left == list(p) and (kind == "Max" or not count_include_pad or not any(p)):
        cfg = {"pool_size": list(k), "strides": list(s), "padding": "same", "data_format": "channels_last"}
        return ctx.add1(f"{kind}Pooling{rank}D", cfg, x, out_shape, x.perm, name=name)  # the same windows
    if kind == "Max":
        edge = not is_nonnegative(ctx, x)
        return _pool_layer(ctx, _padded_for(ctx, x, k, s, p, out, edge, name), "Max", k, s, out_shape, name)
    y = _pool_layer(ctx, _padded_for(ctx, x, k, s, p, out, False, name), "Average", k, s, out_shape, name)
    for i in range(rank):
        factors = []
        for j in range(out[i]):
            start = j * s[i] - p[i]
            end = min(start + k[i], sizes[i] + p[i])
            count = (end - start) if count_include_pad else (min(end, sizes[i]) - max(start, 0))
            factors.append(k[i] / count)
        y = _rescale_runs(ctx, y, 2 + i, factors, f"{name}_ax{i}")
    return y


def _padded_for(ctx, x, k, s, p, out, edge: bool, name: str):
    """``x`` padded (or cut) so that 'valid' windows of size ``k``, stride ``s`` give exactly ``out``."""
    rights = [(out[i] - 1) * s[i] + k[i] - x.shape[2 + i] - p[i] for i in range(len(k))]
    if not edge and all(r >= 0 for r in rights) and (any(p) or any(rights)):  # one ZeroPadding for all axes
        rank = len(k)
        pads = [[pi, r] for pi, r in zip(p, rights)]
        shape = tuple(x.shape[:2]) + tuple(x.shape[2 + i] + p[i] + rights[i] for i in range(rank))
        cfg = {"padding": pads if rank > 1 else pads[0]}
        if rank > 1:
            cfg["data_format"] = "channels_last"
        return ctx.add1(f"ZeroPadding{rank}D", cfg, x, shape, x.perm, name=f"{name}_pad")
    for i in range(len(k)):
        x = _pad_axis(ctx, x, 2 + i, p[i], rights[i], edge, f"{name}_ax{i}")
    return x


def _adaptive_bins(n: int, o: int) -> list:
    """torch's adaptive pooling windows: [floor(i n / o), ceil((i + 1) n / o)) for output i."""
    return [((i * n) // o, -(-((i + 1) * n) // o)) for i in range(o)]


def _runs(bins: list) -> list:
    """Consecutive windows grouped as (first start, length, stride, count, repeat): one pooling each."""
    runs = []
    i = 0
    while i < len(bins):
        j = i
        while j + 1 < len(bins) and bins[j + 1] == bins[i]:
            j += 1
        if j > i:  # the same window repeated (output larger than input): pool once, use it j - i + 1 times
            runs.append((bins[i][0], bins[i][1] - bins[i][0], 1, 1, j - i + 1))
            i = j + 1
            continue
        length = bins[i][1] - bins[i][0]
        j, stride = i, None
        while j + 1 < len(bins) and bins[j + 1][1] - bins[j + 1][0] == length and bins[j + 1] != bins[j]:
            if j + 2 < len(bins) and bins[j + 2] == bins[j + 1]:
                break  # the next window repeats: it starts its own run
            step = bins[j + 1][0] - bins[j][0]
            if stride is None:
                stride = step
            elif step != stride:
                break
            j += 1
        runs.append((bins[i][0], length, stride or 1, j - i + 1, 1))
        i = j + 1
    return runs


def export_adaptive_pool(ctx, x, kind: str, output_size, name: str, value):
    """torch adaptive max/avg pooling to any output size, with the torch windows, in Keras layers."""
    x = ctx.as_channels_last(x)
    rank = x.rank - 2
    sizes = [x.shape[2 + i] for i in range(rank)]
    req = list(output_size) if isinstance(output_size, (list, tuple)) else [output_size] * rank
    out = [n if o is None else int(o) for n, o in zip(sizes, req)]
    out_shape = tuple(value.shape)
    if all(o == 1 for o in out) and not all(n == 1 for n in sizes):
        return ctx.add1(f"Global{kind}Pooling{rank}D", {"keepdims": True, "data_format": "channels_last"}, x,
                        out_shape, x.perm, name=name)  # fmt: skip
    if all(n % o == 0 for n, o in zip(sizes, out)):  # equal windows side by side: one pooling
        k = [n // o for n, o in zip(sizes, out)]
        return _pool_layer(ctx, x, kind, k, k, out_shape, name)
    for i in range(rank):
        n, o = sizes[i], out[i]
        shape = list(x.shape)
        shape[2 + i] = o
        if n % o == 0:
            size = [n // o if a == i else 1 for a in range(rank)]
            x = _pool_layer(ctx, x, kind, size, size, tuple(shape), f"{name}_ax{i}")
            continue
        pieces = []
        for start, length, stride, count, repeat in _runs(_adaptive_bins(n, o)):
            span = x if (start, start + (count - 1) * stride + length) == (0, n) else crop_axes(
                ctx, x, {2 + i: (start, start + (count - 1) * stride + length)}, f"{name}_ax{i}_cut{start}")  # fmt: skip
            pshape = list(span.shape)
            pshape[2 + i] = count
            psize = [length if a == i else 1 for a in range(rank)]
            pstride = [stride if a == i else 1 for a in range(rank)]
            piece = _pool_layer(ctx, span, kind, psize, pstride, tuple(pshape), f"{name}_ax{i}_pool{start}")
            pieces += [piece] * repeat
        x = _concat(ctx, pieces, 2 + i, tuple(shape), f"{name}_ax{i}")
    return x


@exports(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _export_pool(ctx, node, module, args, kwargs, value):
    if getattr(module, "return_indices", False):
        raise ctx.fail("max pooling with return_indices")
    kind = "Max" if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) else "Average"
    return export_window_pool(ctx, args[0], kind, module.kernel_size, module.stride, module.padding,
                              getattr(module, "dilation", 1), bool(module.ceil_mode),
                              bool(getattr(module, "count_include_pad", True)), getattr(module, "divisor_override", None),
                              ctx.layer_name(node), value)  # fmt: skip


@exports(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
         nn.AdaptiveMaxPool3d)  # fmt: skip
def _export_adaptive(ctx, node, module, args, kwargs, value):
    if getattr(module, "return_indices", False):
        raise ctx.fail("adaptive max pooling with return_indices")
    kind = "Max" if "Max" in type(module).__name__ else "Average"
    return export_adaptive_pool(ctx, args[0], kind, module.output_size, ctx.layer_name(node), value)


# functional forms: F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices), ...
_MAX_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_ADAPTIVE_ARGS = ("input", "output_size", "return_indices")


def bind_args(names: tuple, args, kwargs, defaults: dict) -> dict:
    """Positional and keyword arguments of a function call by parameter name, with defaults."""
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


@exports_function(F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d)
def _export_max_pool_fn(ctx, node, args, kwargs, value):
    a = bind_args(_MAX_ARGS, args, kwargs, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                                             "return_indices": False})  # fmt: skip
    if a["return_indices"]:
        raise ctx.fail("max pooling with return_indices")
    return export_window_pool(ctx, a["input"], "Max", a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                              bool(a["ceil_mode"]), True, None, ctx.node.name, value)  # fmt: skip


@exports_function(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d)
def _export_avg_pool_fn(ctx, node, args, kwargs, value):
    a = bind_args(_AVG_ARGS, args, kwargs, {"stride": None, "padding": 0, "ceil_mode": False,
                                             "count_include_pad": True, "divisor_override": None})  # fmt: skip
    return export_window_pool(ctx, a["input"], "Average", a["kernel_size"], a["stride"], a["padding"], 1,
                              bool(a["ceil_mode"]), bool(a["count_include_pad"]), a["divisor_override"],
                              ctx.node.name, value)  # fmt: skip


@exports_function(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                  F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.adaptive_avg_pool1d)  # fmt: skip
def _export_adaptive_fn(ctx, node, args, kwargs, value):
    a = bind_args(_ADAPTIVE_ARGS, args, kwargs, {"return_indices": False})
    if a["return_indices"]:
        raise ctx.fail("adaptive max pooling with return_indices")
    kind = "Max" if "max" in getattr(node.target, "__name__", "") else "Average"
    return export_adaptive_pool(ctx, a["input"], kind, a["output_size"], ctx.node.name, value)


@exports_function(F.pad)
def _export_pad_fn(ctx, node, args, kwargs, value):
    """``F.pad`` of spatial axes: zeros (ZeroPadding), 'replicate' (edge copies) and 'reflect' (mirrored copies)."""
    a = bind_args(("input", "pad", "mode", "value"), args, kwargs, {"mode": "constant", "value": None})
    x, pad, mode = a["input"], list(a["pad"]), a["mode"]
    if mode == "constant" and a["value"] not in (None, 0, 0.0):
        raise ctx.fail(f"padding with the constant {a['value']} (Keras pads with zeros)")
    if mode not in ("constant", "replicate", "reflect"):
        raise ctx.fail(f"padding mode '{mode}'")
    axes = [x.rank - 1 - i // 2 for i in range(0, len(pad), 2)]  # torch lists the last axis first
    if x.rank < 3 or any(ax < 2 for ax, b, e in zip(axes, pad[::2], pad[1::2]) if b or e):
        raise ctx.fail("padding the batch or channel axis (Keras pads spatial axes)")
    x = ctx.as_channels_last(x)
    for ax, b, e in zip(axes, pad[::2], pad[1::2]):
        if mode == "reflect":
            x = _reflect_axis(ctx, x, ax, b, e, f"{node.name}_ax{ax}")
        else:
            x = _pad_axis(ctx, x, ax, b, e, mode == "replicate", f"{node.name}_ax{ax}")
    return x


def _reflect_axis(ctx, x, axis: int, left: int, right: int, name: str):
    n = x.shape[axis]
    if left >= n or right >= n or left < 0 or right < 0:
        raise ctx.fail("reflect padding must be non-negative and smaller than the axis")
    if not left and not right:
        return x
    pieces = [crop_axes(ctx, x, {axis: (i, i + 1)}, f"{name}_at{i}") for i in range(left, 0, -1)]
    pieces.append(x)
    pieces += [crop_axes(ctx, x, {axis: (i, i + 1)}, f"{name}_at{i}") for i in range(n - 2, n - 2 - right, -1)]
    shape = list(x.shape)
    shape[axis] = n + left + right
    return _concat(ctx, pieces, axis, tuple(shape), f"{name}_reflect")
