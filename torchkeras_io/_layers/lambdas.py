"""Keras ``Lambda`` layers as torch modules, from their stored bytecode translated without running it.

The config side (:mod:`torchkeras_io._keras.pycode`) turns the stored function into an expression
tree over the layer's input; :class:`TranslatedLambda` evaluates that tree with torch operations,
in Keras's own layout (channels-last), so axes and slices mean what they meant in Keras. Nothing
from the file is executed, so this is allowed with ``safe_mode=True``.

Random operations (``K.random_normal`` in VAE sampling layers, ...) draw from torch's generator:
their outputs are random, as they are in Keras (seed with ``torch.manual_seed``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._keras.pycode import LambdaProgram, Node, PyCodeError, translate_lambda
from torchkeras_io._keras.pycode.symbolic import fold_binop
from torchkeras_io._layers.registry import Built, builds, unsupported

MAX_RANDOM_ELEMENTS = 1 << 26  # per random draw: 256 MB of float32

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
           "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
           "bool": torch.bool, "float": torch.float32, "int": torch.int32}  # fmt: skip
_TORCH_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                 "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "@": torch.matmul,
                 "<": operator.lt, "<=": operator.le, "==": torch.eq, "!=": torch.ne, ">": operator.gt,
                 ">=": operator.ge}  # fmt: skip


def lambda_refusal(config: dict, generation: int) -> str | None:
    """Why the Lambda with this config cannot be translated, or None when it can."""
    try:
        translate_lambda(config, generation)
    except PyCodeError as exc:
        return str(exc)
    return None


class LambdaError(RuntimeError):
    """A translated Lambda met inputs it cannot compute on (the graph reports it as unsupported)."""


class TranslatedLambda(nn.Module):
    """A Keras ``Lambda`` computed by torch operations from its translated expression.

    ``program.expr`` is the tree; ``program.python`` the CPython version(s) its bytecode came
    from. ``random`` is True when the outputs are random (sampling layers).
    """

    def __init__(self, program: LambdaProgram, keras_name: str = "lambda"):
        super().__init__()
        self.program = program
        self.keras_name = keras_name
        self.random = program.random

    def extra_repr(self) -> str:
        return f"{self.keras_name!r}: {self.program.expr!r} (Python {self.program.python} bytecode)"[:400]

    def forward(self, x, **kwargs):
        ref = x
        while isinstance(ref, (list, tuple)):
            ref = ref[0] if ref else None
        ctx = _Ctx(x, ref)
        out = ctx.value(self.program.expr)
        return tuple(out) if isinstance(out, list) else out


class _Ctx:
    def __init__(self, x, ref):
        self.x, self.ref, self.memo = x, ref, {}

    def value(self, v) -> Any:
        if isinstance(v, Node):
            key = id(v)
            if key not in self.memo:
                self.memo[key] = (v, self.node(v))  # keep v alive so its id is not reused
            return self.memo[key][1]
        if isinstance(v, tuple):
            return tuple(self.value(i) for i in v)
        if isinstance(v, slice):
            return slice(self.value(v.start), self.value(v.stop), self.value(v.step))
        return v

    def tensor(self, v) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v
        dtype = torch.float32 if not isinstance(v, bool) else torch.bool
        device = self.ref.device if isinstance(self.ref, torch.Tensor) else None
        if isinstance(v, (tuple, list)) and all(isinstance(i, torch.Tensor) for i in v):
            return torch.stack(list(v))
        return torch.as_tensor(v, dtype=dtype, device=device)

    def node(self, n: Node) -> Any:
        op = n.op
        if op == "input":
            return self.x
        if op == "tuple":
            return tuple(self.value(a) for a in n.args)
        if op == "slice":
            parts = [self.value(a) for a in n.args]
            return slice(*(_int(p) for p in parts))
        if op == "binop":
            sym, a, b = n.args
            return self.binop(sym, self.value(a), self.value(b))
        if op == "unary":
            sym, a = n.args
            a = self.value(a)
            return -a if sym == "-" else +a
        if op == "getitem":
            obj, index = self.value(n.args[0]), self.value(n.args[1])
            if isinstance(obj, torch.Tensor):
                return _getitem(obj, index)
            if isinstance(obj, (list, tuple)) and isinstance(index, (int, slice)):
                return obj[index]
            raise LambdaError(f"cannot index {type(obj).__name__} with {index!r}")
        if op == "unpack":
            seq, i, count = self.value(n.args[0]), n.args[1], n.args[2]
            if len(seq) != count:
                raise LambdaError(f"cannot unpack {len(seq)} values into {count}")
            return seq[i]
        if op == "call":
            fn = _OPS[n.args[0]]
            return fn(self, **{k: self.value(v) for k, v in n.kwargs.items()})
        raise LambdaError(f"unknown operation {op}")

    def binop(self, sym: str, a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            if isinstance(a, tuple) and isinstance(b, tuple) and sym == "+" and len(a) + len(b) <= 1 << 16:
                return a + b
            return fold_binop(sym, a, b)
        if isinstance(a, (tuple, list)):
            a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
        if isinstance(b, (tuple, list)):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        return _TORCH_BINOPS[sym](a, b)


def _int(v):
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        return int(v)
    raise LambdaError(f"slice bound {v!r} is not an integer")


def _getitem(t: torch.Tensor, index) -> torch.Tensor:
    """NumPy / TensorFlow basic indexing, negative slice steps included (torch has none)."""
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        if not (p is None or p is Ellipsis or isinstance(p, (int, slice))):
            raise LambdaError(f"index {p!r} is not supported")
    consumed = sum(1 for p in parts if p is not None and p is not Ellipsis)
    if consumed > t.dim():
        raise LambdaError(f"too many indices ({consumed}) for a tensor of rank {t.dim()}")
    flips, plain, in_dim, out_dim = [], [], 0, 0
    for p in parts:
        if p is Ellipsis:
            skip = t.dim() - consumed
            in_dim, out_dim = in_dim + skip, out_dim + skip
            plain.append(p)
        elif p is None:
            out_dim += 1
            plain.append(p)
        elif isinstance(p, int):
            in_dim += 1
            plain.append(p)
        else:
            if p.step is not None and p.step < 0:
                flips.append((out_dim, range(*p.indices(t.shape[in_dim]))))
                plain.append(slice(None))
            elif p.step == 0:
                raise LambdaError("slice step cannot be zero")
            else:
                plain.append(p)
            in_dim, out_dim = in_dim + 1, out_dim + 1
    out = t[tuple(plain)]
    for dim, rng in flips:
        idx = (
            torch.arange(rng.start, rng.stop, rng.step, device=t.device)
            if len(rng)
            else torch.zeros(0, dtype=torch.long, device=t.device)
        )
        out = out.index_select(dim, idx)
    return out


# ----------------------------------------------------------------------------- the operations
def _axes(axis):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return int(axis)


def _reduce(fn_all, fn_dim):
    def run(c, x, axis=None, keepdims=False):
        x = c.tensor(x)
        axes = _axes(axis)
        if axes is None:
            out = fn_all(x)
            return out.reshape((1,) * x.dim()) if keepdims else out
        dims = axes if isinstance(axes, tuple) else (axes,)
        return fn_dim(x, dims, bool(keepdims))

    return run


def _prod_dims(x, dims, keep):
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _relu(c, x, alpha=0.0, hi=None, threshold=0.0):
    x = c.tensor(x)
    negative = None
    if alpha:
        if hi is None and not threshold:
            return F.leaky_relu(x, float(alpha))
        negative = torch.relu(-x + threshold) if threshold else torch.relu(-x)
    clip_max = hi is not None
    if threshold:
        x = x * (x > threshold).to(x.dtype)
    elif hi == 6:
        x, clip_max = torch.clamp(x, 0.0, 6.0), False
    else:
        x = torch.relu(x)
    if clip_max:
        x = torch.clamp(x, 0.0, float(hi))
    if negative is not None:
        x = x - alpha * negative
    return x


def _elu(c, x, alpha=1.0):
    x = c.tensor(x)
    res = F.elu(x)
    return res if alpha == 1 else torch.where(x > 0, res, alpha * res)


def _clip_keras(c, x, lo=None, hi=None):
    if hi is not None and lo is not None and not isinstance(hi, torch.Tensor) and hi < lo:
        hi = lo  # Keras 2's K.clip
    return torch.clamp(c.tensor(x), lo if lo is not None else -math.inf, hi if hi is not None else math.inf)


def _l2(c, x, axis=None, epsilon=1e-12):
    x = c.tensor(x)
    axes = _axes(axis)
    dims = tuple(range(x.dim())) if axes is None else axes
    square_sum = torch.sum(x * x, dim=dims, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square_sum, min=float(epsilon)))


def _softmax(c, x, axis=-1):
    return torch.softmax(c.tensor(x), dim=-1 if axis is None else int(axis))


def _cast(c, x, dtype):
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise LambdaError(f"cast to {dtype!r} is not supported")
    return c.tensor(x).to(_DTYPES[name])


def _random_shape(shape) -> tuple:
    dims = tuple(_int(d) for d in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
    if any(d is None or d < 0 for d in dims) or math.prod(dims) > MAX_RANDOM_ELEMENTS:
        raise LambdaError(f"random shape {dims} is not supported")
    return dims


def _dtype_of(c, dtype):
    return _DTYPES.get(str(dtype), torch.float32) if dtype is not None else torch.float32


def _device(c):
    return c.ref.device if isinstance(c.ref, torch.Tensor) else None


def _random_normal(c, shape, mean=0.0, stddev=1.0, dtype=None, std=None):
    out = torch.randn(_random_shape(shape), dtype=_dtype_of(c, dtype), device=_device(c))
    return out * (stddev if std is None else std) + mean


def _random_uniform(c, shape, minval=0.0, maxval=1.0, dtype=None):
    out = torch.rand(_random_shape(shape), dtype=_dtype_of(c, dtype), device=_device(c))
    return out * (maxval - minval) + minval


# ----------------------------------------------------------------------------- resizing, as TensorFlow
def _source(in_size: int, out_size: int, mode: str, device) -> torch.Tensor:
    """The source coordinate of every output pixel along one axis, in float32 as TensorFlow."""
    if mode == "align":
        scale = torch.tensor((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0, dtype=torch.float32)
    else:
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    i = torch.arange(out_size, dtype=torch.float32, device=device)
    scale = scale.to(device)
    if mode == "half":
        return (i + 0.5) * scale - 0.5
    return i * scale


def _linear_axis(x: torch.Tensor, dim: int, out_size: int, mode: str) -> torch.Tensor:
    in_size = x.shape[dim]
    src = _source(in_size, out_size, mode, x.device)
    floor = torch.floor(src)
    lower = torch.clamp(floor, min=0).long().clamp(max=in_size - 1)
    upper = torch.clamp(torch.ceil(src).long(), max=in_size - 1).clamp(min=0)
    lerp = (src - floor).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = out_size
    a, b = x.index_select(dim, lower), x.index_select(dim, upper)
    return a + (b - a) * lerp.reshape(shape)


def _nearest_axis(x: torch.Tensor, dim: int, out_size: int, mode: str) -> torch.Tensor:
    in_size = x.shape[dim]
    if mode == "align":
        src = _source(in_size, out_size, "align", x.device)
        idx = torch.sign(src) * torch.floor(torch.abs(src) + 0.5)  # roundf: half away from zero
    elif mode == "half":
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
        idx = torch.floor((torch.arange(out_size, dtype=torch.float32, device=x.device) + 0.5) * scale.to(x.device))
    else:
        idx = torch.floor(_source(in_size, out_size, "legacy", x.device))
    idx = idx.long().clamp(min=0, max=in_size - 1)
    return x.index_select(dim, idx)


def _resize(x: torch.Tensor, size, method, mode: str, axes=(1, 2)) -> torch.Tensor:
    if x.dim() == 3:
        return _resize(x.unsqueeze(0), size, method, mode, axes).squeeze(0)
    if x.dim() != 4:
        raise LambdaError(f"resizing a tensor of rank {x.dim()} is not supported")
    h, w = (_int(s) for s in size)
    if h is None or w is None or h <= 0 or w <= 0 or h * w > 1 << 28:
        raise LambdaError(f"resize to {size!r} is not supported")
    method = {0: "bilinear", 1: "nearest"}.get(method, method) if not isinstance(method, bool) else method
    method = str(method).lower().replace("resizemethod.", "").replace("nearest_neighbor", "nearest")
    if method not in ("bilinear", "nearest"):
        raise LambdaError(f"resize method {method!r} is not supported (bilinear and nearest are)")
    if not x.is_floating_point():
        x = x.float()
    axis_fn = _linear_axis if method == "bilinear" else _nearest_axis
    out = axis_fn(x, axes[0], h, mode)
    out = axis_fn(out, axes[1], w, mode)
    return out if method == "nearest" else out.to(torch.float32)


def _resize_v1(c, x, size, method=0, align_corners=False, preserve_aspect_ratio=False):
    if preserve_aspect_ratio:
        raise LambdaError("resize_images(preserve_aspect_ratio=True) is not supported")
    return _resize(c.tensor(x), size, method, "align" if align_corners else "legacy")


def _resize_v1_method(method):
    def run(c, x, size, align_corners=False, half_pixel_centers=False):
        mode = "align" if align_corners else "half" if half_pixel_centers else "legacy"
        return _resize(c.tensor(x), size, method, mode)

    return run


def _resize_v2(c, x, size, method="bilinear", preserve_aspect_ratio=False, antialias=False,
               crop_to_aspect_ratio=False, pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0,
               data_format=None):  # fmt: skip
    if preserve_aspect_ratio or antialias or crop_to_aspect_ratio or pad_to_aspect_ratio:
        raise LambdaError("resize with antialias or aspect-ratio options is not supported")
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    return _resize(c.tensor(x), size, method, "half", axes)


def _resize_factor(c, x, fh, fw, data_format=None, method="nearest"):
    x = c.tensor(x)
    axes = (2, 3) if data_format in ("channels_first", "th") else (1, 2)
    size = (x.shape[axes[0]] * int(fh), x.shape[axes[1]] * int(fw))
    return _resize(x, size, method, "legacy", axes)


def _unary(fn):
    return lambda c, x: fn(c.tensor(x))


def _shape(c, x):
    return tuple(int(d) for d in c.tensor(x).shape)


def _int_shape(c, x):
    dims = _shape(c, x)
    return (None,) + dims[1:] if dims else ()


def _squeeze(c, x, axis=None):
    x = c.tensor(x)
    return torch.squeeze(x) if axis is None else torch.squeeze(x, _axes(axis))


def _transpose(c, x, perm=None):
    x = c.tensor(x)
    perm = tuple(range(x.dim() - 1, -1, -1)) if perm is None else tuple(int(p) for p in perm)
    return x.permute(perm)


def _reshape(c, x, shape):
    dims = tuple(-1 if d is None else _int(d) for d in shape)
    return torch.reshape(c.tensor(x), dims)


def _like(fill):
    def run(c, x, dtype=None):
        x = c.tensor(x)
        return torch.full_like(x, fill, dtype=_DTYPES.get(str(dtype), x.dtype) if dtype is not None else x.dtype)

    return run


def _reverse(c, x, perm=None, axis=None):
    axes = perm if perm is not None else axis
    axes = [axes] if isinstance(axes, int) else list(axes)
    return torch.flip(c.tensor(x), dims=[int(a) for a in axes])


def _dot(c, x, y):
    x, y = c.tensor(x), c.tensor(y)
    if y.dim() <= 2:
        return torch.matmul(x, y)
    return torch.tensordot(x, y, dims=([x.dim() - 1], [y.dim() - 2]))  # Keras's nD dot


def _one_hot(c, x, num_classes, on_value=None, off_value=None, axis=None, dtype=None):
    if on_value is not None or off_value is not None or axis not in (None, -1):
        raise LambdaError("one_hot with on_value, off_value or axis is not supported")
    out = F.one_hot(c.tensor(x).long(), int(num_classes))
    return out.to(_DTYPES.get(str(dtype), torch.float32) if dtype is not None else torch.float32)


def _cumsum(c, x, axis=0, exclusive=False, reverse=False):
    x, axis = c.tensor(x), int(axis)
    if reverse:
        x = torch.flip(x, dims=[axis])
    out = torch.cumsum(x, dim=axis)
    if exclusive:
        out = out - x
    return torch.flip(out, dims=[axis]) if reverse else out


def _matmul(c, x, y, transpose_a=False, transpose_b=False):
    a, b = c.tensor(x), c.tensor(y)
    a = a.transpose(-1, -2) if transpose_a else a
    b = b.transpose(-1, -2) if transpose_b else b
    return torch.matmul(a, b)


def _compare(sym):
    return lambda c, x, y: c.binop(sym, c.tensor(x), y)


def _tensors(c, xs) -> list:
    if not isinstance(xs, (list, tuple)):
        raise LambdaError("expected a list of tensors")
    return [c.tensor(t) for t in xs]


_OPS = {
    "sqrt_clip": lambda c, x: torch.sqrt(torch.clamp(c.tensor(x), min=0.0)),
    "sqrt": _unary(torch.sqrt), "square": _unary(torch.square), "exp": _unary(torch.exp), "log": _unary(torch.log),
    "abs": _unary(torch.abs), "sign": _unary(torch.sign), "round": _unary(torch.round),
    "sigmoid": _unary(torch.sigmoid), "tanh": _unary(torch.tanh), "cos": _unary(torch.cos), "sin": _unary(torch.sin),
    "floor": _unary(torch.floor), "ceil": _unary(torch.ceil), "rsqrt": _unary(torch.rsqrt),
    "softplus": _unary(lambda t: F.softplus(t)), "softsign": _unary(lambda t: t / (1 + torch.abs(t))),
    "hard_sigmoid": _unary(lambda t: torch.clamp(0.2 * t + 0.5, 0.0, 1.0)),
    "relu": _relu, "elu": _elu, "softmax": _softmax,
    "maximum": lambda c, x, y: torch.maximum(c.tensor(x), c.tensor(y).to(c.tensor(x).dtype)),
    "minimum": lambda c, x, y: torch.minimum(c.tensor(x), c.tensor(y).to(c.tensor(x).dtype)),
    "pow": lambda c, x, y: torch.pow(c.tensor(x), y),
    "clip_keras": _clip_keras,
    "clip": lambda c, x, lo, hi: torch.clamp(c.tensor(x), lo, hi),
    "sum": _reduce(torch.sum, lambda x, d, k: torch.sum(x, dim=d, keepdim=k)),
    "mean": _reduce(torch.mean, lambda x, d, k: torch.mean(x, dim=d, keepdim=k)),
    "max": _reduce(torch.amax, lambda x, d, k: torch.amax(x, dim=d, keepdim=k)),
    "min": _reduce(torch.amin, lambda x, d, k: torch.amin(x, dim=d, keepdim=k)),
    "prod": _reduce(torch.prod, _prod_dims),
    "std": _reduce(lambda x: torch.std(x, correction=0), lambda x, d, k: torch.std(x, dim=d, keepdim=k, correction=0)),
    "var": _reduce(lambda x: torch.var(x, correction=0), lambda x, d, k: torch.var(x, dim=d, keepdim=k, correction=0)),
    "any": _reduce(torch.any, lambda x, d, k: torch.any(x.bool(), dim=d, keepdim=k)),
    "all": _reduce(torch.all, lambda x, d, k: torch.all(x.bool(), dim=d, keepdim=k)),
    "argmax": lambda c, x, axis=-1: torch.argmax(c.tensor(x), dim=int(axis)),
    "argmin": lambda c, x, axis=-1: torch.argmin(c.tensor(x), dim=int(axis)),
    "l2_normalize": _l2,
    "concatenate": lambda c, x, axis=-1: torch.cat(_tensors(c, x), dim=int(axis)),
    "stack": lambda c, x, axis=0: torch.stack(_tensors(c, x), dim=int(axis)),
    "expand_dims": lambda c, x, axis=-1: torch.unsqueeze(c.tensor(x), int(axis)),
    "squeeze": _squeeze, "reshape": _reshape, "permute": _transpose, "transpose": _transpose,
    "flatten": lambda c, x: torch.reshape(c.tensor(x), (-1,)),
    "batch_flatten": lambda c, x: torch.reshape(c.tensor(x), (c.tensor(x).shape[0], -1)),
    "reverse": _reverse, "dot": _dot, "one_hot": _one_hot, "cumsum": _cumsum, "matmul": _matmul,
    "tile": lambda c, x, n: torch.tile(c.tensor(x), tuple(n) if isinstance(n, (list, tuple)) else (int(n),)),
    "repeat_elements": lambda c, x, rep, axis: torch.repeat_interleave(c.tensor(x), int(rep), dim=int(axis)),
    "logsumexp": _reduce(lambda x: torch.logsumexp(x.reshape(-1), 0),
                         lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k)),
    **{f"compare{sym}": _compare(sym) for sym in ("==", "!=", ">", ">=", "<", "<=")},
    "cast": _cast, "shape": _shape, "int_shape": _int_shape, "len": lambda c, x: len(x),
    "ones_like": _like(1), "zeros_like": _like(0),
    "random_normal": _random_normal, "random_uniform": _random_uniform,
    "resize_v1": _resize_v1, "resize_v1_bilinear": _resize_v1_method("bilinear"),
    "resize_v1_nearest": _resize_v1_method("nearest"), "resize_v2": _resize_v2, "resize_factor": _resize_factor,
}  # fmt: skip


@builds("Lambda")
def _lambda(layer, in_shapes, ctx):
    try:
        program = translate_lambda(layer.config, ctx.generation)
    except PyCodeError as exc:
        raise unsupported(layer, f"its stored Python code is never run, and it could not be translated: {exc}; "
                                 f"pass custom_objects={{'{layer.name}': factory}} with a torch module that "
                                 "computes it") from exc  # fmt: skip
    return Built(TranslatedLambda(program, layer.name), "cl")
