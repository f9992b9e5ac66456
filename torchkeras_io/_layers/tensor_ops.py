"""Config builders for the operations the exporter writes (see :mod:`.._keras.ops_export`):
``tf.roll`` / ``tf.gather`` as ``TFOpLambda`` and the ``keras.ops`` nodes a ``.keras`` file holds
for the ``TFOpLambda`` functions (``Matmul``, ``Roll``, ``Take``, ``Gelu``, ``Add`` with a constant,
``Multiply``, ``Mean``, ``Relu6``, ``Concatenate``, ``Reshape``, ...). A node whose class name is
also a layer's (``Add``, ``Multiply``, ``Concatenate``, ``Reshape``, ``Softmax``, ...) is told
from the layer by its ``module`` (``keras.src.ops.*``). They join the explicit tables of
:mod:`.ops`: nothing named in a file is imported or evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._layers import activation, core, merge, ops  # noqa: F401  (the layer builders of shared names, wrapped below)
from torchkeras_io._layers.op_functions import (
    K3_FUNCTIONS,
    TF_FUNCTIONS,
    binary_op,
    like,
    log_softmax,
    pad,
    prod,
    reduce_op,
    softmax,
    transpose,
)
from torchkeras_io._layers.registry import BUILDERS, Built, builds, unsupported


def _roll(x, shift, axis, **kw):
    shifts = tuple(int(s) for s in shift) if isinstance(shift, (list, tuple)) else int(shift)
    dims = tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)
    return torch.roll(x, shifts, dims)


def _take(x, indices, axis=None, **kw):
    idx = torch.as_tensor(indices, device=x.device).long()
    if axis is None:
        return x.reshape(-1)[idx]
    return x.index_select(int(axis), idx.reshape(-1)).reshape(
        x.shape[: int(axis) % x.dim()] + idx.shape + x.shape[int(axis) % x.dim() + 1 :]
    )


def _gather(x, indices, axis=0, batch_dims=0, **kw):
    if int(batch_dims):
        raise ValueError("batch_dims")
    return _take(x, indices, axis)


def _gelu(x, approximate=False):
    return F.gelu(x, approximate="tanh" if approximate else "none")


def _add(x, y):
    return x + like(y, x)


TF_FUNCTIONS["roll"] = (_roll, ())
TF_FUNCTIONS["gather"] = (_gather, ("indices",))
TF_FUNCTIONS["compat.v1.gather"] = (_gather, ("indices",))
K3_FUNCTIONS.update(Matmul=torch.matmul, Roll=_roll, Take=_take, Gelu=_gelu)


@builds("Matmul")
def _k3_matmul(layer, in_shapes, ctx):
    return Built(ops.KerasOp("Matmul"))


@builds("Roll")
def _k3_roll(layer, in_shapes, ctx):
    return Built(ops.KerasOp("Roll", shift=layer.config.get("shift"), axis=layer.config.get("axis")))


@builds("Take")
def _k3_take(layer, in_shapes, ctx):
    return Built(ops.KerasOp("Take", axis=layer.config.get("axis")))


@builds("Gelu")
def _k3_gelu(layer, in_shapes, ctx):
    return Built(ops.KerasOp("Gelu", approximate=bool(layer.config.get("approximate", True))), "any")


class _K3Pad(nn.Module):
    """``keras.ops.pad``: ``pad_width`` per axis; ``constant_values`` comes as a node keyword."""

    def __init__(self, pad_width, mode: str):
        super().__init__()
        self.pad_width, self.mode = [[int(a), int(b)] for a, b in pad_width], mode

    def forward(self, x, constant_values=None, **kwargs):
        return pad(x, self.pad_width, mode=self.mode.upper(), constant_values=constant_values or 0)


@builds("Pad")
def _k3_pad(layer, in_shapes, ctx):
    c = layer.config
    if c.get("mode", "constant") not in ("constant", "reflect", "symmetric"):
        raise unsupported(layer, f"pad mode {c.get('mode')!r}")
    return Built(_K3Pad(c["pad_width"], c.get("mode", "constant")))


K3_FUNCTIONS["AddOp"] = _add
_merge_add = BUILDERS["Add"]


@builds("Add")
def _add_layer_or_op(layer, in_shapes, ctx):
    """The ``Add`` layer (one list argument), or ``keras.ops.add`` (Keras 3 records it under the
    same class name, with two arguments: a tensor and a constant, in our exports)."""
    calls = layer.calls
    if _is_op_node(layer) or calls and len(calls[0].args) == 2 and not isinstance(calls[0].args[0], list):
        return Built(ops.KerasOp("AddOp"))
    return _merge_add(layer, in_shapes, ctx)


# -- the keras.ops nodes of the TFOpLambda functions (keras3 dialect of .ops_export.TABLE)
def _clip(x, x_min, x_max):
    return torch.minimum(torch.maximum(x, like(x_min, x)), like(x_max, x))


def _concatenate(*xs, axis=0):
    return torch.cat(list(xs), dim=int(axis))


def _stack(*xs, axis=0):
    return torch.stack(list(xs), dim=int(axis))


def _reshape(x, newshape):
    return x.reshape(tuple(int(s) for s in newshape) if isinstance(newshape, (list, tuple)) else (int(newshape),))


def _round(x, decimals=0):
    return torch.round(x, decimals=int(decimals or 0))


_K3_UNARY = {
    "Exp": torch.exp, "Log": torch.log, "Log1p": torch.log1p, "Expm1": torch.expm1, "Sqrt": torch.sqrt,
    "Rsqrt": torch.rsqrt, "Absolute": torch.abs, "Square": torch.square, "Negative": torch.neg,
    "Reciprocal": torch.reciprocal, "Sign": torch.sign, "Floor": torch.floor, "Ceil": torch.ceil,
    "Sin": torch.sin, "Cos": torch.cos, "Tanh": torch.tanh, "Erf": torch.erf, "Sigmoid": torch.sigmoid,
    "Softplus": F.softplus, "Softsign": F.softsign, "Relu": F.relu, "Relu6": F.relu6, "Selu": F.selu,
    "Silu": F.silu, "Isnan": torch.isnan,
}  # fmt: skip
_K3_BINARY = {"Subtract": torch.sub, "Multiply": torch.mul, "Divide": torch.true_divide,
              "FloorDivide": torch.floor_divide, "Maximum": torch.maximum, "Minimum": torch.minimum,
              "Power": torch.pow}  # fmt: skip
# class name -> (function, {config key: default}), the config keys bound as the op's static arguments
_K3_OPS: dict = {name: (fn, {}) for name, fn in _K3_UNARY.items()}
_K3_OPS.update({name: (binary_op(fn), {}) for name, fn in _K3_BINARY.items()})
_K3_OPS.update(
    Mean=(reduce_op(torch.mean), {"axis": None, "keepdims": False}),
    Sum=(reduce_op(torch.sum), {"axis": None, "keepdims": False}),
    Max=(reduce_op(torch.amax), {"axis": None, "keepdims": False}),
    Min=(reduce_op(torch.amin), {"axis": None, "keepdims": False}),
    Prod=(lambda x, axis=None, keepdims=False: prod(x, axis, keepdims), {"axis": None, "keepdims": False}),
    Clip=(_clip, {"x_min": None, "x_max": None}),
    Concatenate=(_concatenate, {"axis": 0}),
    Stack=(_stack, {"axis": 0}),
    Reshape=(_reshape, {"newshape": None}),
    Transpose=(lambda x, axes=None: transpose(x, axes), {"axes": None}),
    Softmax=(lambda x, axis=-1: softmax(x, axis), {"axis": -1}),
    LogSoftmax=(lambda x, axis=-1: log_softmax(x, axis), {"axis": -1}),
    LeakyRelu=(lambda x, negative_slope=0.2: F.leaky_relu(x, float(negative_slope)), {"negative_slope": 0.2}),
    Elu=(lambda x, alpha=1.0: F.elu(x, float(alpha)), {"alpha": 1.0}),
    Round=(_round, {"decimals": 0}),
)
_ELEMENTWISE = set(_K3_UNARY) | {"LeakyRelu", "Elu", "Round"}


def _is_op_node(layer) -> bool:
    return str(getattr(layer, "module", None) or "").startswith("keras.src.ops")


def _k3_op_builder(name: str, layer_builder=None):
    fn, keys = _K3_OPS[name]
    K3_FUNCTIONS[name] = fn

    def build(layer, in_shapes, ctx):
        if layer_builder is not None and not _is_op_node(layer):
            return layer_builder(layer, in_shapes, ctx)  # the layer of the same class name
        static = {k: layer.config.get(k, default) for k, default in keys.items()}
        if name == "Reshape" and static["newshape"] is None:
            raise unsupported(layer, "reshape without a shape")
        return Built(ops.KerasOp(name, **static), "any" if name in _ELEMENTWISE else "cl")

    if layer_builder is not None:  # listed (docs/layers.md) with the layer's family, the op node being the extra
        build.__module__ = layer_builder.__module__
    return build


for _name in _K3_OPS:
    builds(_name)(_k3_op_builder(_name, BUILDERS.get(_name)))
