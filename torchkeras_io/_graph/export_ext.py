"""Export of transformer-style forwards: tensors used directly in ``forward``, and the operations
with no built-in Keras layer (matmul of activations, ``roll``, comparisons, gathers).

Parameters and buffers read in ``forward`` (class tokens, position embeddings, layer scales,
relative position bias tables) become Keras *weights*: a ``LayerNormalization`` with ``beta``
alone (``center=True, scale=False``) applied to zeros of the tensor's shape returns ``beta``
exactly (``(0 - 0) * rsqrt(0 + eps) + beta``), and ``beta`` has the normalised axes' shape, so
the weight has the torch tensor's own shape (:func:`torchkeras_io._layers.trace.tensor_weight`).
Both Kerases and our loader rebuild the layer, and ``load_weights`` restores it like any other.

Operations with no layer become each Keras's own operation nodes: the export config (the
tf-keras dialect) gets ``TFOpLambda`` layers naming a ``tf.*`` function, exactly as tf-keras
writes them; :mod:`torchkeras_io._keras.ops_export` turns those into ``keras.ops`` nodes for the
Keras 3 dialect. docs/export_ops.md lists which torch operation takes which form.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F

from torchkeras_io._layers.base import direct_tensors
from torchkeras_io._layers.trace import KT, binary, gelu_tanh, identity, keras_layer, matmul, roll, tensor_weight, tf_op

_NOT_HANDLED = NotImplemented


# ----------------------------------------------------------------------------- helpers
def _kts(x) -> list:
    if isinstance(x, KT):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _kts(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _kts(v)]
    return []


# ------------------------------------------------------------------------ parameters as weights


def export_param(ctx, gm, node, value):
    """A ``get_attr`` node: the tensor as a Keras tensor (batch first) whose torch value is ``value``.

    torch broadcasts a parameter against batched values: a leading axis of size 1 is the batch
    axis (class token ``(1, 1, D)``, position embedding ``(1, L, D)``); otherwise the tensor
    gets one (layer scale ``(C, 1, 1)`` acts as ``(1, C, 1, 1)``). The Keras layer is named by
    the owning module's path when the tensor is the module's only one, so that by-name loading
    of the file into the torch model pairs it with that module (``torchkeras_io.load_weights``).
    """
    if not isinstance(value, torch.Tensor):
        return value
    owner_path, _, attr = str(node.target).rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    cache = ctx.__dict__.setdefault("_tk_params", {})
    if node.target in cache:
        return cache[node.target]
    try:  # the user's module owns the tensor (the traced copy shares it): weights are read from there
        real = ctx.root.get_submodule(owner_path) if owner_path else ctx.root
    except AttributeError:
        real = owner
    if getattr(real, attr, None) is None:
        real = owner
    only = list(direct_tensors(real)) == [attr]
    name = owner_path.replace(".", "_") if (only and owner_path) else str(node.target).replace(".", "_")
    y = tensor_weight(ctx, real, attr, name)
    shape = tuple(value.shape)
    if len(shape) >= 2 and shape[0] == 1:  # the leading 1 is torch's batch broadcast
        y = keras_layer(ctx, "Reshape", {"target_shape": list(shape[1:])}, y, shape, f"{name}_batch")
        out = KT(y.ref, identity(len(shape)), shape, value.dtype)
    else:
        out = KT(y.ref, identity(len(shape) + 1), (1, *shape), value.dtype)
    ctx.__dict__.setdefault("_tk_param_refs", {})[out.ref] = (y, shape, name)
    cache[node.target] = out
    return out


def _is_param(ctx, x) -> bool:
    return hasattr(x, "ref") and x.ref in ctx.__dict__.get("_tk_param_refs", {})


def _param_at_rank(ctx, p, rank: int):
    """Parameter ``p`` broadcast as torch does against a value of ``rank`` axes: ones in front."""
    if p.rank >= rank:
        return p
    base, shape, name = ctx._tk_param_refs[p.ref]
    full = (1,) * (rank - len(shape)) + shape
    y = keras_layer(ctx, "Reshape", {"target_shape": list(full[1:])}, base, full, f"{name}_rank{rank}")
    out = KT(y.ref, identity(rank), full, p.dtype)
    ctx._tk_param_refs[out.ref] = (base, shape, name)
    return out


_ARITH = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.mul: "mul",
          torch.mul: "mul"}  # fmt: skip


def _param_binary(ctx, op: str, a, b, value):
    """Arithmetic with a parameter: its rank brought to the other's, the activation first when
    the order does not matter (the parameter is permuted to the activation's layout, not the reverse)."""
    if hasattr(a, "ref") and hasattr(b, "ref"):
        a, b = _param_at_rank(ctx, a, b.rank), _param_at_rank(ctx, b, a.rank)
        if op in ("add", "mul") and _is_param(ctx, a) and not _is_param(ctx, b):
            a, b = b, a
    return binary(ctx, op, a, b, value)


# ----------------------------------------------------------------------------------- operations
_COMPARE = {operator.eq: "math.equal", torch.eq: "math.equal", operator.ne: "math.not_equal", torch.ne: "math.not_equal",
            operator.lt: "math.less", torch.lt: "math.less", operator.le: "math.less_equal", torch.le: "math.less_equal",
            operator.gt: "math.greater", torch.gt: "math.greater", operator.ge: "math.greater_equal",
            torch.ge: "math.greater_equal"}  # fmt: skip
_METHOD_COMPARE = {"eq": "math.equal", "ne": "math.not_equal", "lt": "math.less", "le": "math.less_equal",
                   "gt": "math.greater", "ge": "math.greater_equal"}  # fmt: skip
_TF_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.int32: "int32", torch.int64: "int64",
              torch.bool: "bool", torch.float16: "float16"}  # fmt: skip


def _torchvision_fn(target, name: str) -> bool:
    return getattr(target, "__name__", None) == name and str(getattr(target, "__module__", "")).startswith(
        "torchvision."
    )


def export_op(ctx, node, args, kwargs, value) -> Any:
    """Operations handled here, or ``NotImplemented`` for :func:`._export._export_op` to go on."""
    target = node.target
    if not _kts((args, kwargs)):
        if isinstance(value, torch.Tensor) and node.op == "call_function" and target not in (torch._assert,):
            return _NOT_HANDLED  # a tensor from no graph input: let the caller refuse it
        return value  # shapes, sizes and asserts on them are static once the input shape is fixed
    if node.op == "call_method":
        name = target
        x = args[0]
        if name in _METHOD_COMPARE:
            return _compare(ctx, _METHOD_COMPARE[name], x, args[1] if len(args) > 1 else kwargs["other"], value)
        if name in ("float", "to", "type") and x.dtype != value.dtype:
            return _cast(ctx, x, value)
        if name == "expand":
            return _expand(ctx, x, value)
        if name == "roll":
            return _roll(ctx, x, *(list(args[1:]) + [kwargs.get(k) for k in ("shifts", "dims") if k in kwargs]),
                         value=value)  # fmt: skip
        if name == "matmul":
            return _matmul(ctx, x, args[1], value)
        if name in ("mul", "add", "sub") and len(args) > 1 and (_is_param(ctx, x) or _is_param(ctx, args[1])):
            return _param_binary(ctx, name, x, args[1], value)
        return _NOT_HANDLED
    if target in _COMPARE:
        a, b = args[0], args[1]
        if not hasattr(a, "ref"):  # 0 == x: the same as x == 0 with the operator mirrored
            mirror = {"math.less": "math.greater", "math.greater": "math.less", "math.less_equal": "math.greater_equal",
                      "math.greater_equal": "math.less_equal"}  # fmt: skip
            return _compare(ctx, mirror.get(_COMPARE[target], _COMPARE[target]), b, a, value)
        return _compare(ctx, _COMPARE[target], a, b, value)
    if target in _ARITH and len(args) == 2 and (_is_param(ctx, args[0]) or _is_param(ctx, args[1])):
        return _param_binary(ctx, _ARITH[target], args[0], args[1], value)
    if target in (torch.matmul, operator.matmul):
        return _matmul(ctx, args[0], args[1], value)
    if target is F.scaled_dot_product_attention:
        return _sdpa(ctx, args, kwargs, value)
    if target is F.pad:
        return _pad(ctx, args, kwargs, value)  # NotImplemented for the built-in-layer forms (pooling.py)
    if target is torch.roll:
        shifts = args[1] if len(args) > 1 else kwargs["shifts"]
        dims = args[2] if len(args) > 2 else kwargs.get("dims")
        return _roll(ctx, args[0], shifts, dims, value=value)
    if target is F.gelu:
        if kwargs.get("approximate", "none") == "tanh":
            return gelu_tanh(ctx, args[0], value, ctx.node.name)
        return _NOT_HANDLED
    if _torchvision_fn(target, "_patch_merging_pad"):
        return _patch_merging(ctx, args[0], value)
    return _NOT_HANDLED


def _compare(ctx, function: str, a, b, value):
    if hasattr(b, "ref"):
        b = ctx.permute(b, a.perm) if b.rank == a.rank else b
        if b.rank != a.rank:
            raise ctx.fail("comparing tensors of different rank")
    elif isinstance(b, (bool, int, float)):
        b = float(b) if a.dtype.is_floating_point else b
    else:
        raise ctx.fail("comparing with a constant tensor")
    return tf_op(ctx, function, a, {"y": b}, value.shape, a.perm, torch.bool, ctx.node.name)


def _cast(ctx, x, value):
    if value.dtype not in _TF_DTYPES:
        raise ctx.fail(f"cast to {value.dtype}")
    return tf_op(ctx, "cast", x, {"dtype": _TF_DTYPES[value.dtype]}, value.shape, x.perm, value.dtype, ctx.node.name)


def _expand(ctx, x, value):
    """``expand`` that only broadcasts the batch axis (a class token to the batch) is a no-op in Keras."""
    shape = tuple(value.shape)
    if len(shape) == x.rank and all(s == t or a == x.batch_axis for a, (s, t) in enumerate(zip(shape, x.shape))):
        return KT(x.ref, x.perm, shape, x.dtype)
    raise ctx.fail(f"expanding {tuple(x.shape)} to {shape} (only the batch axis may be broadcast)")


def _roll(ctx, x, shifts, dims=None, value=None):
    if dims is None:
        raise ctx.fail("roll of the flattened tensor")
    shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    axes = [x.keras_axis(d) for d in dims]
    if 0 in axes:
        raise ctx.fail("roll along the batch axis")
    return roll(ctx, x, [int(s) for s in shifts], axes, value.shape, ctx.node.name)


def _matmul(ctx, a, b, value):
    if not (hasattr(a, "ref") and hasattr(b, "ref")):
        raise ctx.fail("matmul with a constant tensor")
    if a.rank != b.rank or a.rank < 3:
        raise ctx.fail("matmul of tensors of different ranks (or without a batch)")
    a, b = ctx.as_torch(a), ctx.as_torch(b)
    return matmul(ctx, a, b, value.shape, ctx.node.name)


def _pad(ctx, args, kwargs, value):
    """``F.pad`` with a constant other than 0, or of the batch-free non-spatial axes: ``tf.pad``
    (Keras 3: ``keras.ops.pad``). Zeros, edge copies and reflections of spatial axes are left to
    the built-in-layer exporter of ``F.pad`` (``_layers/pooling.py``)."""
    x = args[0]
    call = {**dict(zip(("input", "pad", "mode", "value"), args)), **kwargs}
    pad, mode = [int(p) for p in call["pad"]], call.get("mode", "constant")
    fill = float(call.get("value") or 0.0)
    pairs = {x.rank - 1 - i: (pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)}
    spatial = x.rank >= 3 and all(axis >= 2 for axis, p in pairs.items() if any(p))
    if mode != "constant" or (fill == 0.0 and spatial):
        return _NOT_HANDLED
    if any(p < 0 for p in pad):
        raise ctx.fail("F.pad with negative padding (cropping)")
    paddings = [list(pairs.get(axis, (0, 0))) for axis in x.perm]
    if any(paddings[0]):
        raise ctx.fail("padding the batch axis")
    return tf_op(ctx, "pad", x, {"paddings": paddings, "mode": "CONSTANT", "constant_values": fill}, value.shape,
                 x.perm, value.dtype, ctx.node.name)  # fmt: skip


def _sdpa(ctx, args, kwargs, value):
    """``F.scaled_dot_product_attention`` without mask or dropout: ``softmax(q k^T * scale) v`` from
    ``Rescaling``, ``Permute``, two matmul ops and ``Softmax``."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    call = {**dict(zip(names, args)), **kwargs}
    if call.get("attn_mask") is not None or call.get("is_causal") or call.get("dropout_p", 0.0):
        raise ctx.fail("scaled_dot_product_attention with a mask, causal or dropout")
    q, k, v = (ctx.as_torch(call[n]) for n in ("query", "key", "value"))
    if not (q.rank == k.rank == v.rank >= 3) or call.get("enable_gqa"):
        raise ctx.fail("scaled_dot_product_attention on tensors without a batch, or of different ranks")
    scale = call.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    name = ctx.node.name
    q = ctx.add1("Rescaling", {"scale": scale, "offset": 0.0}, q, q.shape, q.perm, name=f"{name}_scaled")
    dims = list(range(1, k.rank - 2)) + [k.rank - 1, k.rank - 2]
    kt_shape = (*k.shape[:-2], k.shape[-1], k.shape[-2])
    kt = ctx.add1("Permute", {"dims": dims}, k, kt_shape, identity(k.rank), name=f"{name}_kt")
    scores = matmul(ctx, q, kt, (*q.shape[:-1], k.shape[-2]), f"{name}_scores")
    weights = ctx.add1("Softmax", {"axis": -1}, scores, scores.shape, scores.perm, name=f"{name}_softmax")
    return matmul(ctx, weights, v, value.shape, name)


def _patch_merging(ctx, x, value):
    """torchvision Swin's ``_patch_merging_pad``: pad H and W to even, then the four 2x2
    neighbours side by side on the channel axis, as a reshape and a permute (no slicing)."""
    x = ctx.as_torch(x)
    if x.rank != 4:
        raise ctx.fail("patch merging of a tensor that is not (N, H, W, C)")
    _, H, W, C = x.shape
    name = ctx.node.name
    if H % 2 or W % 2:  # F.pad(x, (0, 0, 0, W % 2, 0, H % 2)): zeros after the last row / column
        pad_h, pad_w = H % 2, W % 2
        H, W = H + pad_h, W + pad_w
        x = keras_layer(ctx, "ZeroPadding2D", {"padding": [[0, pad_h], [0, pad_w]], "data_format": "channels_last"}, x,
                   (x.shape[0], H, W, C), f"{name}_pad")  # fmt: skip
    b = x.shape[0]
    y = keras_layer(ctx, "Reshape", {"target_shape": [H // 2, 2, W // 2, 2, C]}, x, (b, H // 2, 2, W // 2, 2, C),
               f"{name}_split")  # fmt: skip
    # (row pair i, column pair j) -> channel block 2*j + i: x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1)
    y = keras_layer(ctx, "Permute", {"dims": [1, 3, 4, 2, 5]}, y, (b, H // 2, W // 2, 2, 2, C), f"{name}_order")
    return keras_layer(ctx, "Reshape", {"target_shape": [H // 2, W // 2, 4 * C]}, y, tuple(value.shape), name)
