"""torch implementations of the operations configs name: the ``keras.ops`` functions Keras 3 records
as layers (:data:`K3_FUNCTIONS`, by class name) and the TensorFlow functions tf.keras records in
``TFOpLambda`` layers (:data:`TF_FUNCTIONS`, by function name). :mod:`.ops` and
:mod:`.tensor_ops` build layers from these tables: a name outside them is unsupported.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def axes_of(axis) -> Optional[tuple]:
    if axis is None:
        return None
    return tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else (int(axis),)


def binary_op(op: Callable) -> Callable:
    def fn(a, b):
        ref = a if isinstance(a, torch.Tensor) else b
        a = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
        b = b if isinstance(b, torch.Tensor) else torch.as_tensor(b, dtype=ref.dtype, device=ref.device)
        return op(a, b)

    return fn


def reduce_op(op: Callable) -> Callable:
    def fn(x, axis=None, keepdims=False):
        dims = axes_of(axis)
        if dims is None:
            out = op(x, dim=tuple(range(x.dim())), keepdim=keepdims) if x.dim() else x
        else:
            out = op(x, dim=dims, keepdim=keepdims)
        return out

    return fn


def _squeeze(x, axis=None):
    return x.squeeze() if axis is None else x.squeeze(axes_of(axis))


_K3_BINARY = {"NotEqual": torch.ne, "Equal": torch.eq, "Greater": torch.gt, "GreaterEqual": torch.ge,
              "Less": torch.lt, "LessEqual": torch.le, "LogicalAnd": torch.logical_and,
              "LogicalOr": torch.logical_or, "LogicalXor": torch.logical_xor}  # fmt: skip


def _cast(x, dtype):
    return x.to(dtype)


def expand_dims(x, axis):
    for a in sorted(int(v) % (x.dim() + len(axis)) for v in axis):
        x = x.unsqueeze(a)
    return x


K3_FUNCTIONS: dict = {name: binary_op(op) for name, op in _K3_BINARY.items()}
K3_FUNCTIONS.update(LogicalNot=torch.logical_not, Any=reduce_op(torch.any), All=reduce_op(torch.all), Cast=_cast,
                     ExpandDims=expand_dims, Squeeze=_squeeze)  # fmt: skip


def like(y, x):
    """``y`` as a tensor of ``x``'s dtype (TensorFlow converts constants to the other operand's)."""
    if isinstance(y, torch.Tensor):
        if isinstance(x, torch.Tensor) and y.dtype != x.dtype:
            return y.to(x.dtype)
        return y
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(y, dtype=x.dtype, device=x.device)
    return torch.as_tensor(y)


def _tf_binary(op: Callable, second: str = "y") -> Callable:
    def fn(x, **kw):
        y = kw[second]
        if not isinstance(x, torch.Tensor):
            x = like(x, y)
        return op(x, like(y, x))

    fn.second = second
    return fn


def _tf_unary(op: Callable) -> Callable:
    def fn(x, **kw):
        return op(x)

    return fn


def _gelu(x, approximate=False, **kw):
    return F.gelu(x, approximate="tanh" if approximate else "none")


def _leaky_relu(x, alpha=0.2, **kw):
    return F.leaky_relu(x, float(alpha))


def softmax(x, axis=None, **kw):
    return torch.softmax(x, dim=-1 if axis is None else int(axis))


def log_softmax(x, axis=None, **kw):
    return torch.log_softmax(x, dim=-1 if axis is None else int(axis))


def _tf_reduce(op: Callable) -> Callable:
    def fn(x, axis=None, keepdims=False, **kw):
        return reduce_op(op)(x, axis, bool(keepdims))

    return fn


def _reshape(x, shape, **kw):
    return x.reshape(tuple(int(s) for s in shape))


def transpose(x, perm=None, **kw):
    return x.permute(tuple(range(x.dim() - 1, -1, -1)) if perm is None else tuple(int(p) for p in perm))


def _tf_expand_dims(x, axis, **kw):
    return expand_dims(x, axes_of(axis))


def _tf_squeeze(x, axis=None, **kw):
    return _squeeze(x, axis)


def _concat(x, axis, **kw):
    return torch.cat(list(x), dim=int(axis))


def _stack(x, axis=0, **kw):
    return torch.stack(list(x), dim=int(axis))


def _matmul(x, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False, **kw):
    a, b = x, like(b, x)
    if transpose_a or adjoint_a:
        a = a.transpose(-1, -2)
    if transpose_b or adjoint_b:
        b = b.transpose(-1, -2)
    return torch.matmul(a, b)


def _clip(x, clip_value_min, clip_value_max, **kw):
    return torch.minimum(torch.maximum(x, like(clip_value_min, x)), like(clip_value_max, x))


def _l2_normalize(x, axis=None, epsilon=1e-12, **kw):
    dims = axes_of(axis) or tuple(range(x.dim()))
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=dims, keepdim=True), min=float(epsilon)))


def _bias_add(x, bias, data_format=None, **kw):
    bias = like(bias, x)
    if data_format and str(data_format).startswith("NC") and x.dim() > 2:
        return x + bias.reshape((-1,) + (1,) * (x.dim() - 2))
    return x + bias


def _pad_index(n: int, a: int, b: int, mode: str, device) -> torch.Tensor:
    mid = torch.arange(n, device=device)
    if mode == "REFLECT":
        before, after = torch.arange(a, 0, -1, device=device), torch.arange(n - 2, n - 2 - b, -1, device=device)
    else:  # SYMMETRIC
        before, after = torch.arange(a - 1, -1, -1, device=device), torch.arange(n - 1, n - 1 - b, -1, device=device)
    return torch.cat([before, mid, after])


def pad(x, paddings, mode="CONSTANT", constant_values=0, **kw):
    pairs = [(int(a), int(b)) for a, b in paddings]
    mode = str(mode).upper()
    if mode == "CONSTANT":
        flat = [v for a, b in reversed(pairs) for v in (a, b)]
        return F.pad(x, flat, value=float(constant_values))
    for axis, (a, b) in enumerate(pairs):
        if a or b:
            x = x.index_select(axis, _pad_index(x.shape[axis], a, b, mode, x.device))
    return x


def _getitem(x, slice_spec, **kw):
    spec = slice_spec if isinstance(slice_spec, list) else [slice_spec]
    index = []
    for s in spec:
        if isinstance(s, dict) and s.get("class_name") == "__ellipsis__":
            index.append(Ellipsis)
        elif isinstance(s, dict):
            index.append(slice(s.get("start"), s.get("stop"), s.get("step")))
        else:
            index.append(s)
    return x[tuple(index)]


TF_UNARY = {
    "math.erf": torch.erf, "math.erfc": torch.erfc, "math.sigmoid": torch.sigmoid, "nn.sigmoid": torch.sigmoid,
    "math.tanh": torch.tanh, "nn.tanh": torch.tanh, "math.exp": torch.exp, "math.log": torch.log,
    "math.log1p": torch.log1p, "math.expm1": torch.expm1, "math.sqrt": torch.sqrt, "math.rsqrt": torch.rsqrt,
    "math.abs": torch.abs, "math.square": torch.square, "math.negative": torch.neg, "__operators__.neg": torch.neg,
    "math.reciprocal": torch.reciprocal, "math.sign": torch.sign, "math.floor": torch.floor,
    "math.ceil": torch.ceil, "math.round": torch.round, "math.sin": torch.sin, "math.cos": torch.cos,
    "math.softplus": F.softplus, "nn.softplus": F.softplus, "math.softsign": F.softsign, "nn.softsign": F.softsign,
    "nn.relu": F.relu, "nn.relu6": F.relu6, "nn.elu": F.elu, "nn.selu": F.selu, "nn.silu": F.silu,
    "nn.swish": F.silu, "math.logical_not": torch.logical_not, "math.is_nan": torch.isnan,
}  # fmt: skip
TF_BINARY = {
    "math.add": torch.add, "__operators__.add": torch.add, "math.add_v2": torch.add,
    "math.subtract": torch.sub, "math.multiply": torch.mul, "math.divide": torch.true_divide,
    "math.truediv": torch.true_divide, "math.floordiv": torch.floor_divide,
    "compat.v1.floor_div": torch.floor_divide, "math.maximum": torch.maximum,
    "math.minimum": torch.minimum, "math.pow": torch.pow, "math.squared_difference": lambda a, b: (a - b) ** 2,
    "math.greater": torch.gt, "math.greater_equal": torch.ge, "math.less": torch.lt, "math.less_equal": torch.le,
    "math.equal": torch.eq, "math.not_equal": torch.ne, "math.logical_and": torch.logical_and,
    "math.logical_or": torch.logical_or,
}  # fmt: skip
_TF_REDUCE = {"math.reduce_mean": torch.mean, "math.reduce_sum": torch.sum, "math.reduce_max": torch.amax,
              "math.reduce_min": torch.amin, "math.reduce_prod": None, "math.reduce_any": torch.any,
              "math.reduce_all": torch.all}  # fmt: skip

# name -> (function, names of arguments that may hold inline tensors)
TF_FUNCTIONS: dict = {
    "nn.gelu": (_gelu, ()), "nn.leaky_relu": (_leaky_relu, ()), "nn.softmax": (softmax, ()),
    "math.softmax": (softmax, ()), "nn.log_softmax": (log_softmax, ()), "reshape": (_reshape, ()),
    "transpose": (transpose, ()), "compat.v1.transpose": (transpose, ()), "expand_dims": (_tf_expand_dims, ()),
    "compat.v1.expand_dims": (_tf_expand_dims, ()), "squeeze": (_tf_squeeze, ()),
    "compat.v1.squeeze": (_tf_squeeze, ()), "concat": (_concat, ()), "stack": (_stack, ()),
    "linalg.matmul": (_matmul, ("b",)), "matmul": (_matmul, ("b",)), "clip_by_value": (_clip, ("clip_value_min",
    "clip_value_max")), "math.l2_normalize": (_l2_normalize, ()), "nn.l2_normalize": (_l2_normalize, ()),
    "nn.bias_add": (_bias_add, ("bias",)), "pad": (pad, ()), "compat.v1.pad": (pad, ()),
    "__operators__.getitem": (_getitem, ()),
}  # fmt: skip
for _f, _op in TF_UNARY.items():
    TF_FUNCTIONS[_f] = (_tf_unary(_op), ())
for _f, _op in TF_BINARY.items():
    TF_FUNCTIONS[_f] = (_tf_binary(_op), ("y",))
for _f, _op in _TF_REDUCE.items():
    if _op is not None:
        TF_FUNCTIONS[_f] = (_tf_reduce(_op), ())
TF_FUNCTIONS["math.reduce_prod"] = (lambda x, axis=None, keepdims=False, **kw: prod(x, axis, keepdims), ())
TF_FUNCTIONS["cast"] = (lambda x, dtype, **kw: x.to(dtype), ())
TF_FUNCTIONS["dtypes.cast"] = TF_FUNCTIONS["cast"]


def prod(x, axis, keepdims):
    dims = axes_of(axis)
    dims = tuple(range(x.dim())) if dims is None else tuple(d % x.dim() for d in dims)
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=bool(keepdims))
    return x
