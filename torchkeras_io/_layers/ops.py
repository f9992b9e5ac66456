"""Operation layers and image preprocessing: Keras 3 op nodes, tf.keras ``TFOpLambda``,
``Resizing``, ``CenterCrop``, ``Normalization``.

Keras 3 records the ``keras.ops`` calls of a functional model (e.g. the ``NotEqual`` / ``Any``
of a ``Masking`` layer's mask) as nodes of their own; tf.keras records TensorFlow calls as
``TFOpLambda`` / ``SlicingOpLambda`` nodes naming the function (``"math.add"``) with its
arguments inline. Both are built here from an explicit table of known functions: nothing named
in a file is ever imported or evaluated, and a function outside the table is reported as
unsupported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._keras.config import Ref
from torchkeras_io._layers.op_functions import K3_FUNCTIONS, TF_BINARY, TF_FUNCTIONS, TF_UNARY, axes_of
from torchkeras_io._layers.registry import Built, builds, unsupported
from torchkeras_io.modules import Normalization, same_padding


def _has_ref(x: Any) -> bool:
    if isinstance(x, Ref):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_ref(v) for v in x)
    if isinstance(x, dict):
        return any(_has_ref(v) for v in x.values())
    return False


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_tensor(v) for v in x)
    return False


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
           "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
           "bool": torch.bool, "float": torch.float32, "int": torch.int64, "double": torch.float64,
           "half": torch.float16}  # fmt: skip


def _dtype(layer, name: Any) -> torch.dtype:
    if isinstance(name, dict):  # tf.DType serialised by tf.keras
        name = name.get("config", {}).get("name", name.get("class_name"))
    if not isinstance(name, str) or name not in _DTYPES:
        raise unsupported(layer, f"dtype {name!r}")
    return _DTYPES[name]


# ------------------------------------------------------------------------------- Keras 3 ops
class KerasOp(nn.Module):
    """A ``keras.ops`` function node: ``fn(*inputs)`` with its config arguments bound."""

    def __init__(self, name: str, **static):
        super().__init__()
        self.op_name, self.static = name, static

    def forward(self, x, **kwargs):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        return K3_FUNCTIONS[self.op_name](*xs, **self.static)

    def extra_repr(self) -> str:
        return f"{self.op_name}, {self.static}" if self.static else self.op_name


def _k3_builder(name: str):
    def build(layer, in_shapes, ctx):
        c = layer.config
        if name in ("Any", "All"):
            return Built(KerasOp(name, axis=c.get("axis"), keepdims=bool(c.get("keepdims", False))))
        if name == "Cast":
            return Built(KerasOp(name, dtype=_dtype(layer, c.get("dtype"))))
        if name == "ExpandDims":
            return Built(KerasOp(name, axis=axes_of(c.get("axis"))))
        if name == "Squeeze":
            return Built(KerasOp(name, axis=c.get("axis")))
        return Built(KerasOp(name))

    return build


for _name in K3_FUNCTIONS:
    builds(_name)(_k3_builder(_name))


# ------------------------------------------------------------------------------- tf.keras ops
class TFOp(nn.Module):
    """A TensorFlow function recorded by tf.keras (``TFOpLambda``), computed in torch.

    ``consts`` are the call's inline tensors (kept as non-persistent buffers: the file holds no
    weights for them), ``static`` its other constant arguments; tensors from the graph come in
    as keyword arguments at call time.
    """

    def __init__(self, function: str, consts: dict, static: dict):
        super().__init__()
        self.function, self.static = function, dict(static)
        self._consts = list(consts)
        for i, value in enumerate(consts.values()):
            self.register_buffer(f"const{i}", value, persistent=False)

    def forward(self, x, **kwargs):
        args = dict(self.static)
        for i, name in enumerate(self._consts):
            args[name] = getattr(self, f"const{i}")
        for name, value in kwargs.items():
            if _has_tensor(value):
                args[name] = value
        return TF_FUNCTIONS[self.function][0](x, **args)

    def extra_repr(self) -> str:
        return f"tf.{self.function}"


def _constant(value, dtype: torch.dtype) -> torch.Tensor:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise ValueError("ragged constant")
    if arr.dtype.kind in "iub":
        return torch.as_tensor(arr)
    return torch.as_tensor(arr.astype(np.float64)).to(dtype)


def _call_kwargs(layer) -> tuple:
    """(first positional argument, keyword arguments) of the op's call; one call, or identical ones."""
    if not layer.calls:
        raise unsupported(layer, "the op is never called")
    call = layer.calls[0]
    for other in layer.calls[1:]:
        same = {k: v for k, v in other.kwargs.items() if not _has_ref(v)} == {
            k: v for k, v in call.kwargs.items() if not _has_ref(v)
        }
        if not same:
            raise unsupported(layer, "called several times with different constant arguments")
    first = call.args[0] if len(call.args) == 1 else call.args
    return first, {k: v for k, v in call.kwargs.items() if k != "name"}


@builds("TFOpLambda", "SlicingOpLambda")
def _tf_op(layer, in_shapes, ctx):
    function = layer.config.get("function")
    if not isinstance(function, str):
        raise unsupported(layer, f"function {function!r} is not a TensorFlow function name")
    function = function[3:] if function.startswith("tf.") else function
    first, kwargs = _call_kwargs(layer)
    dtype = _dtype(layer, layer.config.get("dtype") or "float32")
    if function in _CONV:
        return _CONV[function](layer, first, kwargs, in_shapes, dtype)
    if function in ("image.resize", "compat.v1.image.resize"):
        return _tf_resize(layer, kwargs)
    if function in ("cast", "dtypes.cast"):
        return Built(TFOp(function, {}, {"dtype": _dtype(layer, kwargs.get("dtype"))}), "any")
    entry = TF_FUNCTIONS.get(function)
    if entry is None:
        raise unsupported(layer, f"tf.{function} is not among the TensorFlow functions torchkeras_io computes")
    tensor_args = entry[1]
    consts, static = {}, {}
    for name, value in kwargs.items():
        if _has_ref(value):
            continue
        if name in tensor_args and isinstance(value, list):
            try:
                consts[name] = _constant(value, dtype)
            except ValueError as exc:
                raise unsupported(layer, f"argument {name}: {exc}") from exc
        else:
            static[name] = value
    if function == "__operators__.getitem" and _has_ref(kwargs.get("slice_spec")):
        raise unsupported(layer, "slicing with tensor bounds")
    if function == "__operators__.getitem":
        for s in static.get("slice_spec") if isinstance(static.get("slice_spec"), list) else [static.get("slice_spec")]:
            if isinstance(s, dict) and s.get("step") is not None and int(s["step"]) < 0:
                raise unsupported(layer, "slicing with a negative step")
    module = TFOp(function, consts, static)
    # element-wise on one tensor, or with a scalar: any layout; anything else sees Keras's layout
    scalar_only = not consts and not any(_has_ref(v) for v in kwargs.values())
    elementwise = function in TF_UNARY or function in TF_BINARY
    layout = "any" if elementwise and scalar_only and isinstance(first, Ref) else "cl"
    return Built(module, layout)


# -- convolutions recorded as TensorFlow ops (channels-first in torch, weights precomputed)
class TFConv(nn.Module):
    """``tf.nn.convolution`` / ``conv2d`` / ``depthwise_conv2d`` with an inline filter, on
    channels-first input; ``padding`` is "SAME", "VALID" or explicit (begin, end) pairs."""

    def __init__(self, weight: torch.Tensor, stride, dilation, groups: int, padding):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.padding = padding
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]

    def forward(self, x, **kwargs):
        if self.padding == "SAME":
            pads = []
            for i in reversed(range(len(self.stride))):
                k = self.weight.shape[2 + i]
                pads += same_padding(x.shape[2 + i], k, self.stride[i], self.dilation[i])
            if any(pads):
                x = F.pad(x, pads)
        elif self.padding != "VALID":
            pads = [v for a, b in reversed(self.padding) for v in (a, b)]
            if any(pads):
                x = F.pad(x, pads)
        return self.conv(x, self.weight.to(x.dtype), None, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, stride={self.stride}, dilation={self.dilation}, "
                f"groups={self.groups}, padding={self.padding!r}")  # fmt: skip


def _spatial(value, n: int, channels_first: bool, what: str) -> tuple:
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    value = [int(v) for v in value]
    if len(value) == 1:
        return (value[0],) * n
    if len(value) == n:
        return tuple(value)
    if len(value) == n + 2:
        return tuple(value[2:]) if channels_first else tuple(value[1:-1])
    raise ValueError(f"{what} {value} for a {n}-D convolution")


def _conv_padding(padding, n: int, channels_first: bool):
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        return padding.upper()
    pairs = [(int(a), int(b)) for a, b in padding]
    if len(pairs) == n + 2:
        pairs = pairs[2:] if channels_first else pairs[1:-1]
    if len(pairs) != n:
        raise ValueError(f"padding {padding} for a {n}-D convolution")
    return tuple(pairs)


def _tf_conv(filter_arg: str, depthwise: bool, dilation_arg: str = "dilations"):
    def build(layer, first, kwargs, in_shapes, dtype):
        filt = kwargs.get(filter_arg, kwargs.get("filters", kwargs.get("filter")))
        if filt is None or _has_ref(filt):
            raise unsupported(layer, "the filter is a graph tensor, not a constant")
        w = _constant(filt, dtype)
        n = w.dim() - 2
        if n not in (1, 2, 3):
            raise unsupported(layer, f"a {n}-D convolution")
        fmt = kwargs.get("data_format") or ""
        channels_first = str(fmt).startswith("NC")
        try:
            stride = _spatial(kwargs.get("strides"), n, channels_first, "strides")
            dil = kwargs.get(dilation_arg) if kwargs.get(dilation_arg) is not None else kwargs.get("dilations")
            dilation = _spatial(dil, n, channels_first, "dilations")
            padding = _conv_padding(kwargs.get("padding", "VALID"), n, channels_first)
        except (TypeError, ValueError) as exc:
            raise unsupported(layer, str(exc)) from exc
        if depthwise:  # (k..., in, multiplier) -> (in * multiplier, 1, k...), out channel c * m + j
            c_in, mult = w.shape[-2], w.shape[-1]
            weight = w.permute((n, n + 1) + tuple(range(n))).reshape((c_in * mult, 1) + tuple(w.shape[:n]))
            groups = c_in
        else:  # (k..., in / groups, out) -> (out, in / groups, k...)
            weight = w.permute((n + 1, n) + tuple(range(n)))
            channels = in_shapes[0][1 if channels_first else -1] if in_shapes and in_shapes[0] else None
            groups = 1 if channels is None else max(1, int(channels) // int(w.shape[-2]))
        module = TFConv(weight.contiguous(), stride, dilation, groups, padding)
        return Built(module, "cl" if channels_first else "cf")

    return build


_CONV = {
    "nn.convolution": _tf_conv("filters", False),
    "nn.conv1d": _tf_conv("filters", False),
    "nn.conv2d": _tf_conv("filters", False),
    "nn.conv3d": _tf_conv("filters", False),
    "compat.v1.nn.conv2d": _tf_conv("filter", False),
    "compat.v1.nn.convolution": _tf_conv("filter", False, "dilation_rate"),
    "nn.depthwise_conv2d": _tf_conv("filter", True),
    "compat.v1.nn.depthwise_conv2d": _tf_conv("filter", True, "rate"),
}


# ------------------------------------------------------------------------------- image preprocessing
class Resize(nn.Module):
    """Keras ``Resizing`` / ``tf.image.resize`` on channels-first images (half-pixel centres,
    as TensorFlow and Keras 3 compute "bilinear" and "nearest"), optionally cropping or padding
    to the target's aspect ratio first (Keras's ``crop_to_aspect_ratio`` / ``pad_to_aspect_ratio``)."""

    def __init__(self, size, interpolation: str = "bilinear", antialias: bool = False, crop_to_aspect: bool = False,
                 pad_to_aspect: bool = False, fill_value: float = 0.0):  # fmt: skip
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.interpolation, self.antialias = interpolation, bool(antialias)
        self.crop_to_aspect, self.pad_to_aspect, self.fill_value = bool(crop_to_aspect), bool(pad_to_aspect), fill_value

    def forward(self, x, **kwargs):
        if not x.is_floating_point():
            x = x.float()
        th, tw = self.size
        h, w = x.shape[-2], x.shape[-1]
        if self.crop_to_aspect:
            ch = max(min(h, int(float(w * th) / tw)), 1)
            cw = max(min(w, int(float(h * tw) / th)), 1)
            hs, ws = int(float(h - ch) / 2), int(float(w - cw) / 2)
            x = x[..., hs : hs + ch, ws : ws + cw]
        elif self.pad_to_aspect:
            ph = max(h, int(float(w * th) / tw))
            pw = max(w, int(float(h * tw) / th))
            hs, ws = int(float(ph - h) / 2), int(float(pw - w) / 2)
            x = F.pad(x, (ws, ws, hs, hs), value=float(self.fill_value))  # Keras pads both sides alike
        if tuple(x.shape[-2:]) == (th, tw):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(th, tw), mode="nearest-exact")
        return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=self.antialias)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation!r}"


class CenterCrop(nn.Module):
    """Keras ``CenterCrop`` on channels-first images: the centre, or (for a smaller image) a
    bilinear resize of the largest centred box of the target's aspect ratio."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = int(height), int(width)
        self.resize = Resize((height, width), "bilinear", crop_to_aspect=True)

    def forward(self, x, **kwargs):
        h, w = x.shape[-2], x.shape[-1]
        if h >= self.height and w >= self.width:
            hs, ws = (h - self.height) // 2, (w - self.width) // 2
            return x[..., hs : hs + self.height, ws : ws + self.width]
        return self.resize(x)


def _tf_resize(layer, kwargs):
    method = kwargs.get("method", "bilinear")
    method = method.lower() if isinstance(method, str) else method
    size = kwargs.get("size")
    if method not in ("bilinear", "nearest") or _has_ref(size) or size is None:
        raise unsupported(layer, f"tf.image.resize with method {method!r} and size {size!r}")
    if kwargs.get("preserve_aspect_ratio") or kwargs.get("antialias"):
        raise unsupported(layer, "tf.image.resize with preserve_aspect_ratio or antialias")
    return Built(Resize(size, method), "cf")


@builds("Resizing")
def _resizing(layer, in_shapes, ctx):
    c = layer.config
    interpolation = c.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "nearest"):
        raise unsupported(layer, f"interpolation {interpolation!r} (bilinear and nearest are exact in torch)")
    if c.get("pad_to_aspect_ratio") and c.get("fill_mode", "constant") != "constant":
        raise unsupported(layer, f"pad_to_aspect_ratio with fill_mode {c.get('fill_mode')!r}")
    module = Resize((c["height"], c["width"]), interpolation, bool(c.get("antialias", False)),
                    bool(c.get("crop_to_aspect_ratio")), bool(c.get("pad_to_aspect_ratio")),
                    float(c.get("fill_value") or 0.0))  # fmt: skip
    return Built(module, "cl" if c.get("data_format") == "channels_first" else "cf")


@builds("CenterCrop")
def _center_crop(layer, in_shapes, ctx):
    c = layer.config
    module = CenterCrop(c["height"], c["width"])
    return Built(module, "cl" if c.get("data_format") == "channels_first" else "cf")


@builds("Normalization")
def _normalization(layer, in_shapes, ctx):
    c = layer.config
    shape = in_shapes[0]
    rank = len(shape)
    axis = c.get("axis", -1)
    axes = () if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
    keep = sorted(int(a) % rank for a in axes)
    if any(shape[d] is None for d in keep):
        raise unsupported(layer, f"a kept axis of {shape} is unknown")
    stats = tuple(int(shape[d]) for d in keep)
    broadcast = tuple(int(shape[d]) if d in keep else 1 for d in range(rank))
    invert = bool(c.get("invert", False))
    mean, variance = c.get("mean"), c.get("variance")
    if mean is None:
        return Built(Normalization(stats, invert, broadcast), "cl", "", mask="pass")
    try:
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), stats).astype(np.float32)
        variance = np.broadcast_to(np.asarray(variance, dtype=np.float64), stats).astype(np.float32)
    except ValueError as exc:
        raise unsupported(layer, f"mean/variance do not fit the kept axes {stats}: {exc}") from exc
    return Built(Normalization(stats, invert, broadcast, mean=mean, variance=variance), "cl", None, mask="pass")
