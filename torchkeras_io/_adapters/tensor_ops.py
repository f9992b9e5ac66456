"""Config builders for the operations the exporter writes (see :mod:`.._keras.ops_export`):
``tf.roll`` / ``tf.gather`` as ``TFOpLambda`` and the ``keras.ops`` nodes ``Matmul``, ``Roll``,
``Take``, ``Gelu`` and ``Add`` (with a constant). They join the explicit tables of :mod:`.ops`:
nothing named in a file is imported or evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import merge, ops  # noqa: F401  (merge: the Add layer builder, wrapped below)
from .registry import BUILDERS, Built, builds, unsupported


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
    return x + ops._like(y, x)


ops._TF_FUNCTIONS["roll"] = (_roll, ())
ops._TF_FUNCTIONS["gather"] = (_gather, ("indices",))
ops._TF_FUNCTIONS["compat.v1.gather"] = (_gather, ("indices",))
ops._K3_FUNCTIONS.update(Matmul=torch.matmul, Roll=_roll, Take=_take, Gelu=_gelu)


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
        return ops._pad(x, self.pad_width, mode=self.mode.upper(), constant_values=constant_values or 0)


@builds("Pad")
def _k3_pad(layer, in_shapes, ctx):
    c = layer.config
    if c.get("mode", "constant") not in ("constant", "reflect", "symmetric"):
        raise unsupported(layer, f"pad mode {c.get('mode')!r}")
    return Built(_K3Pad(c["pad_width"], c.get("mode", "constant")))


ops._K3_FUNCTIONS["AddOp"] = _add
_merge_add = BUILDERS["Add"]


@builds("Add")
def _add_layer_or_op(layer, in_shapes, ctx):
    """The ``Add`` layer (one list argument), or ``keras.ops.add`` (Keras 3 records it under the
    same class name, with two arguments: a tensor and a constant, in our exports)."""
    calls = layer.calls
    if calls and len(calls[0].args) == 2 and not isinstance(calls[0].args[0], list):
        return Built(ops.KerasOp("AddOp"))
    return _merge_add(layer, in_shapes, ctx)
