"""Slicing torch values for export: ``x[:, :k]``, ``x[..., 0]``, ``split`` / ``chunk`` / ``unbind`` / ``narrow``.

Every cut is a Cropping layer (see :func:`.pooling.crop_axes`); dropped and added unit axes are
Reshapes. Piece sizes are read from the traced values, so torch's own split rules decide them.
"""

from __future__ import annotations

import torch

from torchkeras_io._layers.pooling import crop_axes
from torchkeras_io._layers.registry import exports_function, exports_method
from torchkeras_io._layers.trace import KT, dropped, shape_op


def export_getitem(ctx, x, index, value):
    """``x[index]`` for basic indexing: slices with step 1, integers, None and Ellipsis."""
    idx = index if isinstance(index, tuple) else (index,)
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) or isinstance(i, bool) for i in idx):
        raise ctx.fail(f"indexing a tensor with {index!r} (only slices, integers, None and ... have Keras layers)")
    real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        at = idx.index(Ellipsis)
        idx = idx[:at] + (slice(None),) * (x.rank - real) + idx[at + 1 :]
        real = x.rank
    idx = idx + (slice(None),) * (x.rank - real)
    spans, drops, adds, axis = {}, [], False, 0
    for i in idx:
        if i is None:
            adds = True
            continue
        n = x.shape[axis]
        if isinstance(i, slice):
            b, e, step = i.indices(n)
            if step != 1:
                raise ctx.fail(f"slicing with step {step}")
            if e <= b:
                raise ctx.fail("an empty slice")
            spans[axis] = (b, e)
        else:
            if not -n <= i < n:
                raise ctx.fail(f"index {i} out of range for an axis of length {n}")
            spans[axis] = (i % n, i % n + 1)
            drops.append(axis)
        axis += 1
    if x.batch_axis in spans and spans[x.batch_axis] != (0, x.shape[x.batch_axis]):
        raise ctx.fail("indexing the batch axis (Keras keeps every sample)")
    name = ctx.node.name
    y = crop_axes(ctx, x, spans, f"{name}_crop" if drops or adds else name)
    return _reshaped(ctx, y, drops, adds, value, name)


def _reshaped(ctx, y, drops: list, adds: bool, value, name: str):
    if not drops and not adds:
        return y
    if value.dim() < 2:
        raise ctx.fail("a result without a feature axis (Keras tensors keep (batch, features...))")
    if adds:  # new unit axes: Keras reshapes in its own order, so go to torch's
        y = ctx.as_torch(y)
        if y.batch_axis != 0:
            raise ctx.fail("adding an axis to a tensor whose batch is not its first axis")
        return ctx.add1("Reshape", {"target_shape": list(value.shape[1:])}, y, tuple(value.shape),
                        tuple(range(value.dim())), name=name)  # fmt: skip
    perm = y.perm
    for a in sorted(drops, reverse=True):  # dropping unit axes keeps the order of the others
        perm = dropped(perm, a)
    kshape = [value.shape[p] for p in perm[1:]]
    if y.batch_axis in drops:
        raise ctx.fail("indexing the batch axis (Keras keeps every sample)")
    return ctx.add1("Reshape", {"target_shape": kshape}, y, tuple(value.shape), perm, name=name)


def _pieces(ctx, x, dim: int, value, drop: bool = False) -> tuple:
    """The pieces of ``x`` along torch axis ``dim`` with the sizes of the traced ``value`` pieces."""
    if not isinstance(x, KT):
        return value
    dim = dim % x.rank
    if dim == x.batch_axis:
        raise ctx.fail("splitting along the batch axis (Keras keeps every sample)")
    out, start = [], 0
    for i, v in enumerate(value):
        length = 1 if drop else v.shape[dim]
        name = f"{ctx.node.name}_{i}"
        piece = crop_axes(ctx, x, {dim: (start, start + length)}, f"{name}_crop" if drop else name)
        out.append(_reshaped(ctx, piece, [dim], False, v, name) if drop else piece)
        start += length
    return tuple(out)


def _arg(args, kwargs, i: int, name: str, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


@exports_function(torch.split, torch.chunk, torch.tensor_split)
@exports_method("split", "chunk", "tensor_split")
def _export_split(ctx, node, args, kwargs, value):
    return _pieces(ctx, args[0], _arg(args, kwargs, 2, "dim", 0), value)


@exports_function(torch.unbind)
@exports_method("unbind")
def _export_unbind(ctx, node, args, kwargs, value):
    return _pieces(ctx, args[0], _arg(args, kwargs, 1, "dim", 0), value, drop=True)


@exports_function(torch.narrow)
@exports_method("narrow")
def _export_narrow(ctx, node, args, kwargs, value):
    x, dim = args[0], _arg(args, kwargs, 1, "dim", 0)
    start, length = _arg(args, kwargs, 2, "start", 0), _arg(args, kwargs, 3, "length", None)
    dim %= x.rank
    start %= x.shape[dim]
    return crop_axes(ctx, x, {dim: (start, start + length)}, node.name)


@exports_method("reshape_as", "view_as")
def _export_reshape_as(ctx, node, args, kwargs, value):
    # the other tensor is only a shape: the traced value gives it
    return shape_op(ctx, "reshape", args[0], (), {}, value)
