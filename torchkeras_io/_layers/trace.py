"""Keras tensors during export, and the Keras layers that family exporters build from them.

An exporter (``@exports`` in the family modules, run by :mod:`torchkeras_io._graph.export`)
follows every torch value as a :class:`KT`: a Keras tensor together with a permutation ``perm``
such that ``keras_tensor == torch_tensor.permute(perm)``. The helpers here add the layers common
to many exporters: shape operations (``permute``/``view``/``mean``/...), element-wise arithmetic,
TensorFlow operation nodes (``TFOpLambda``) and tensors held as Keras weights. ``ctx`` is the
export context (``_graph.export.ExportContext``): ``add``, ``add1``, ``permute``, ``as_torch``, ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from torchkeras_io._layers.base import KerasLayer
from torchkeras_io._layers.registry import WeightSource
from torchkeras_io._tensors import Lazy


@dataclasses.dataclass(frozen=True)
class KT:
    """A Keras tensor during export: its producer, its axis order and the torch value's shape."""

    ref: tuple  # (layer name, node index, tensor index)
    perm: tuple  # keras tensor == torch tensor.permute(perm)
    shape: tuple  # torch shape, batch axis first
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch_axis(self) -> int:
        """The torch axis that holds the batch (Keras axis 0)."""
        return self.perm[0]

    @property
    def keras_shape(self) -> tuple:
        return tuple(self.shape[p] for p in self.perm)

    def keras_axis(self, torch_axis: int) -> int:
        """Position of torch axis ``torch_axis`` in the Keras tensor."""
        return self.perm.index(torch_axis % self.rank)

    def torch_order(self) -> tuple:
        """torch's own axis order with the batch axis moved first (identity for batch-first values)."""
        b = self.batch_axis
        return (b,) + tuple(a for a in range(self.rank) if a != b)


def identity(rank: int) -> tuple:
    return tuple(range(rank))


def channels_last(rank: int) -> tuple:
    """torch (N, C, *spatial) -> Keras (N, *spatial, C)."""
    return (0,) + tuple(range(2, rank)) + (1,) if rank >= 3 else identity(rank)


def out_spec(ctx, x: KT, value: torch.Tensor, perm=None) -> tuple:
    """(torch shape, perm, dtype) of an output like ``x`` (or with ``perm``), for ``ctx.add``."""
    return (tuple(value.shape), tuple(perm if perm is not None else x.perm), value.dtype)


def softmax(ctx, x: KT, dim, value) -> KT:
    if dim is None:
        raise ctx.fail("softmax without an explicit dim")
    return ctx.add1("Softmax", {"axis": x.keras_axis(dim)}, x, tuple(value.shape), x.perm, name=ctx.node.name)


def binary(ctx, op: str, a, b, value) -> KT:
    if isinstance(a, KT) and isinstance(b, KT):
        b = ctx.permute(b, a.perm) if b.rank == a.rank else b
        if b.rank != a.rank:
            raise ctx.fail("broadcasting tensors of different rank")
        cls = {"add": "Add", "sub": "Subtract", "mul": "Multiply"}.get(op)
        if cls is None:
            raise ctx.fail("division of two tensors has no Keras layer")
        return ctx.add(cls, {}, [a, b], [out_spec(ctx, a, value)], name=ctx.node.name)[0]
    x, c = (a, b) if isinstance(a, KT) else (b, a)
    if isinstance(c, torch.Tensor) or not isinstance(c, (int, float)):
        raise ctx.fail("arithmetic with a constant tensor has no Keras layer (only Python numbers)")
    c = float(c)
    if op == "add":
        scale, offset = 1.0, c
    elif op == "sub":
        scale, offset = (1.0, -c) if isinstance(a, KT) else (-1.0, c)
    elif op == "mul":
        scale, offset = c, 0.0
    elif isinstance(a, KT):
        scale, offset = 1.0 / c, 0.0
    else:
        raise ctx.fail("a number divided by a tensor has no Keras layer")
    return ctx.add1("Rescaling", {"scale": scale, "offset": offset}, x, tuple(value.shape), x.perm, name=ctx.node.name)


def _dims(args) -> list:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        return list(args[0])
    return list(args)


def shape_op(ctx, name: str, x: KT, args, kwargs, value) -> Any:
    rank = x.rank
    if name == "permute":
        d = [a % rank for a in _dims(args or kwargs.get("dims"))]
        return _repermuted(ctx, x, d, value)
    if name == "transpose":
        a, b = (args[0] % rank, args[1] % rank) if len(args) >= 2 else (kwargs["dim0"] % rank, kwargs["dim1"] % rank)
        d = list(range(rank))
        d[a], d[b] = d[b], d[a]
        return _repermuted(ctx, x, d, value)
    if name == "mean":
        dims = args[0] if args else kwargs.get("dim")
        dims = sorted(d % rank for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        keep = bool(args[1] if len(args) > 1 else kwargs.get("keepdim", False))
        if rank >= 3 and dims == list(range(2, rank)):
            x = ctx.as_channels_last(x)
            perm = channels_last(value.dim()) if keep else identity(value.dim())
            return ctx.add1(f"GlobalAveragePooling{rank - 2}D", {"keepdims": keep}, x, tuple(value.shape), perm,
                            name=ctx.node.name)  # fmt: skip
        if rank == 3 and len(dims) == 1 and dims[0] != x.batch_axis and not keep:  # over time: (N, L, C) or (L, N, C)
            b, t = x.batch_axis, dims[0]
            x = ctx.permute(x, (b, t, 3 - b - t))
            return ctx.add1("GlobalAveragePooling1D", {}, x, tuple(value.shape), dropped(x.perm, t), name=ctx.node.name)
        raise ctx.fail(f"mean over axes {dims} of a rank-{rank} tensor")
    if name == "softmax":
        dim = args[0] if args else kwargs.get("dim")
        return softmax(ctx, x, dim, value)
    # view / reshape / flatten / (un)squeeze: Keras reshapes in its own axis order, so go torch order
    if x.batch_axis != 0:
        raise ctx.fail("reshaping a tensor whose batch is not its first axis (make it batch-first, e.g. "
                       ".transpose(0, 1), before reshaping)")  # fmt: skip
    x = ctx.as_torch(x)
    out_shape = tuple(value.shape)
    if out_shape[0] != x.shape[0]:
        raise ctx.fail("reshaping across the batch axis")
    if len(out_shape) == 2 and out_shape[1] == math.prod(x.shape[1:]):
        if x.rank == 2:
            return x
        return ctx.add1("Flatten", {}, x, out_shape, identity(2), name=ctx.node.name)
    return ctx.add1("Reshape", {"target_shape": list(out_shape[1:])}, x, out_shape, identity(len(out_shape)),
                    name=ctx.node.name)  # fmt: skip


def _repermuted(ctx, x: KT, d: list, value) -> KT:
    inv = [0] * len(d)
    for i, di in enumerate(d):
        inv[di] = i
    return KT(x.ref, tuple(inv[p] for p in x.perm), tuple(value.shape), x.dtype)


def dropped(perm: tuple, axis: int) -> tuple:
    """``perm`` of a tensor after torch axis ``axis`` is indexed or reduced away."""
    return tuple(p - (p > axis) for p in perm if p != axis)


# ----------------------------------------------------------------- operation nodes and weights
def tf_op(ctx, function: str, x, kwargs: dict, shape, perm, dtype, name: str):
    """A ``TFOpLambda`` calling ``tf.<function>(x, **kwargs)``, as tf-keras records one."""
    y = ctx.add("TFOpLambda", {"function": function}, x, [(tuple(shape), tuple(perm), dtype)], name=name,
                kwargs={**kwargs, "name": None})[0]  # fmt: skip
    # tf-keras writes an op's node as the bare entry [layer, node, tensor, kwargs]: wrapped in a
    # list, as other layers' nodes are, it would read list arguments (gather indices) as tensors
    nodes = ctx.layer_entry(y.ref[0])["inbound_nodes"]
    nodes[-1] = nodes[-1][0]
    return y


def keras_layer(ctx, cls: str, cfg: dict, x, shape, name: str, **kw):
    """A layer on a tensor followed in Keras's own order (identity ``perm``)."""
    return ctx.add1(cls, cfg, x, tuple(shape), identity(len(shape)), name=name, **kw)


class ParamAdapter:
    """The weights of the ``LayerNormalization`` standing for ``module.<attr>``: ``beta`` only."""

    family = "param"

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def export(self, module, ctx=None):
        return [KerasLayer("LayerNormalization", [Lazy.of("beta", getattr(module, self.attr))])]


def _zeros(ctx, shape: tuple):
    """A Keras tensor of zeros, ``(batch, *shape)``, derived from the model's first input.

    ``ReLU(max_value=0)`` makes 0 of every finite or infinite input value (a NaN in the input's
    first element stays NaN, and so do the tensors made from it); the rest are built-in reshaping
    layers, so the zeros are exact in every Keras."""
    cache = ctx.__dict__.setdefault("_tk_zeros", {})
    if "one" not in cache:
        entry = next(e for e in ctx.layers if e["class_name"] == "InputLayer")
        if entry["config"]["dtype"] != "float32":
            raise ctx.fail("a tensor attribute in a model whose first input is not float32")
        kshape = entry["config"]["batch_input_shape"]
        src = KT((entry["name"], 0, 0), tuple(range(len(kshape))), (2, *kshape[1:]), torch.float32)
        n = math.prod(kshape[1:])
        flat = keras_layer(ctx, "Reshape", {"target_shape": [n, 1]}, src, (2, n, 1), "tensor_source_flat")
        one = keras_layer(ctx, "Cropping1D", {"cropping": [0, n - 1]}, flat, (2, 1, 1), "tensor_source_pick")
        cache["one"] = keras_layer(ctx, "ReLU", {"max_value": 0.0, "negative_slope": 0.0, "threshold": 0.0}, one,
                              (2, 1, 1), "tensor_source_zero")  # fmt: skip
    if shape not in cache:
        n = math.prod(shape)
        z = cache["one"]
        if n != 1:
            z = keras_layer(ctx, "UpSampling1D", {"size": n}, z, (2, n, 1), "tensor_source_zeros")
        cache[shape] = keras_layer(ctx, "Reshape", {"target_shape": list(shape)}, z, (2, *shape), "tensor_source_shape")
    return cache[shape]


def tensor_weight(ctx, module, attr: str, name: str, adapter=None):
    """``module.<attr>`` as a Keras tensor ``(batch, *shape)`` held by a weight of layer ``name``."""
    t = getattr(module, attr)
    if not t.is_floating_point():
        raise ctx.fail(f"integer tensor '{attr}' used directly in forward")
    shape = tuple(t.shape)
    zeros = _zeros(ctx, shape)
    cfg = {"axis": list(range(1, len(shape) + 1)), "epsilon": 1e-3, "center": True, "scale": False}
    source = WeightSource("", module, adapter or ParamAdapter(attr), 0, None)
    return keras_layer(ctx, "LayerNormalization", cfg, zeros, (2, *shape), name, module=module, part=("param", attr),
                  weights=source)  # fmt: skip


def gelu_tanh(ctx, x, value, name: str):
    """``tf.nn.gelu(x, approximate=True)`` (Keras 3: ``keras.ops.gelu(x, approximate=True)``)."""
    return tf_op(ctx, "nn.gelu", x, {"approximate": True}, value.shape, x.perm, value.dtype, name)


def roll(ctx, x, shifts: list, axes: list, shape, name: str):
    """``tf.roll`` (Keras 3: ``keras.ops.roll``) over Keras axes ``axes``."""
    return tf_op(ctx, "roll", x, {"shift": shifts, "axis": axes}, shape, x.perm, x.dtype, name)


def matmul(ctx, a, b, shape, name: str):
    """``tf.linalg.matmul(a, b)`` over the last two Keras axes (Keras 3: ``keras.ops.matmul``)."""
    return tf_op(ctx, "linalg.matmul", a, {"b": b}, shape, a.perm, a.dtype, name)
