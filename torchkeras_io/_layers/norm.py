"""Normalization: BatchNorm{1,2,3}d <-> BatchNormalization, LayerNorm, GroupNorm.

BatchNormalization keeps gamma, beta (when affine), moving_mean, moving_variance in that order;
torch's ``num_batches_tracked`` has no Keras slot and travels as a torch extra. Files written by
TF 1.x ``tf.keras`` (``tf.layers`` based, e.g. keras_version ``2.0.6-tf``) store ``beta`` before
``gamma``; loading orders the weights by their names when every name says what it is.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchkeras_io._layers.base import Adapter, KerasLayer, lazy_param, owns_exactly
from torchkeras_io._layers.registry import Built, WeightSource, adapts, builds, exports, unsupported

# weight-name endings -> canonical slot (Keras 1 called the moving variance "running_std")
_BN_SLOTS = (
    ("moving_mean", 2),
    ("moving_variance", 3),
    ("running_mean", 2),
    ("running_std", 3),
    ("gamma", 0),
    ("beta", 1),
)


def _bn_slot(weight_name: str):
    leaf = weight_name.split("/")[-1].split(":")[0]
    for role, slot in _BN_SLOTS:
        if re.search(rf"(^|_){role}(_\d+)?$", leaf):
            return slot
    return None


@adapts
class BatchNormAdapter(Adapter):
    family = "norm"

    def match(self, module):
        return (
            isinstance(module, _BatchNorm)
            and module.track_running_stats
            and owns_exactly(module, ["running_mean", "running_var"], ["weight", "bias", "num_batches_tracked"])
        )

    def export(self, module, ctx=None):
        # Keras keeps gamma only with scale=True and beta only with center=True
        weights = []
        if module.weight is not None:
            weights.append(lazy_param(module, "weight", "gamma"))
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "beta"))
        weights += [
            lazy_param(module, "running_mean", "moving_mean"),
            lazy_param(module, "running_var", "moving_variance"),
        ]
        extras = []
        if module.num_batches_tracked is not None:
            extras.append(lazy_param(module, "num_batches_tracked", "num_batches_tracked"))
        return [KerasLayer("BatchNormalization", weights, extras, ("moving_mean", "moving_variance"))]

    def normalize(self, module, index, weights, extras, info):
        slots = [_bn_slot(w.name) for w in weights]
        if None not in slots and len(set(slots)) == len(slots) and slots != sorted(slots):
            weights = [w for _, w in sorted(zip(slots, weights), key=lambda t: t[0])]
        return weights, extras

    def load(self, module, index, weights, extras):
        names = [n for n in ("weight", "bias") if getattr(module, n) is not None] + ["running_mean", "running_var"]
        out = dict(zip(names, weights))
        if "num_batches_tracked" in extras and module.num_batches_tracked is not None:
            out["num_batches_tracked"] = extras["num_batches_tracked"]
        return out


@adapts
class LayerNormAdapter(Adapter):
    family = "norm"

    def match(self, module):
        return (
            isinstance(module, nn.LayerNorm)
            and owns_exactly(module, [], ["weight", "bias"])
            and (module.weight is not None or module.bias is not None)
        )

    def export(self, module, ctx=None):
        weights = []
        if module.weight is not None:
            weights.append(lazy_param(module, "weight", "gamma"))
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "beta"))
        return [KerasLayer("LayerNormalization", weights)]

    def load(self, module, index, weights, extras):
        return dict(zip([n for n in ("weight", "bias") if getattr(module, n) is not None], weights))


@adapts
class GroupNormAdapter(Adapter):
    family = "norm"

    def match(self, module):
        return isinstance(module, nn.GroupNorm) and owns_exactly(module, ["weight", "bias"])

    def export(self, module, ctx=None):
        return [
            KerasLayer(
                "GroupNormalization", [lazy_param(module, "weight", "gamma"), lazy_param(module, "bias", "beta")]
            )
        ]

    def load(self, module, index, weights, extras):
        return {"weight": weights[0], "bias": weights[1]}


# ------------------------------------------------------------------------------- config -> torch
_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _axes(value, rank: int) -> list:
    axes = value if isinstance(value, (list, tuple)) else [value]
    return sorted(int(a) % rank for a in axes)


@builds("BatchNormalization")
def _batch_norm(layer, in_shapes, ctx):
    c = layer.config
    rank = len(in_shapes[0])
    axes = _axes(c.get("axis", -1), rank)
    if len(axes) != 1 or axes[0] not in (1, rank - 1) or rank not in _BN:
        raise unsupported(layer, f"normalising axis {c.get('axis')} of a rank-{rank} input")
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    if c.get("renorm"):
        raise unsupported(layer, "batch renormalization")
    channels = in_shapes[0][axes[0]]
    if channels is None:
        raise unsupported(layer, f"unknown channel count in {in_shapes[0]}")
    bn = _BN[rank](int(channels), eps=float(c.get("epsilon", 1e-3)), momentum=1.0 - float(c.get("momentum", 0.99)),
                   affine=center or scale)  # fmt: skip
    if center != scale:  # Keras has gamma only with scale, beta only with center: F.batch_norm takes either None
        bn.register_parameter("bias" if scale else "weight", None)
    # the channel axis is the Keras last axis (run channels-first) or already axis 1
    layout = "cl" if axes[0] == 1 or rank == 2 else "cf"
    return Built(bn, layout, "", mask="pass")


@builds("LayerNormalization")
def _layer_norm(layer, in_shapes, ctx):
    c = layer.config
    rank = len(in_shapes[0])
    axes = _axes(c.get("axis", -1), rank)
    if axes != list(range(rank - len(axes), rank)) or c.get("rms_scaling"):
        raise unsupported(layer, f"normalising axes {c.get('axis')} (torch LayerNorm normalises trailing axes)")
    shape = [in_shapes[0][a] for a in axes]
    if any(s is None for s in shape):
        raise unsupported(layer, f"unknown normalised shape in {in_shapes[0]}")
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    ln = nn.LayerNorm(shape, eps=float(c.get("epsilon", 1e-3)), elementwise_affine=center or scale, bias=center)
    if center and not scale:  # beta without gamma: F.layer_norm takes weight=None
        ln.register_parameter("weight", None)
    return Built(ln, "cl", "" if (scale or center) else None, mask="pass")


@builds("GroupNormalization")
def _group_norm(layer, in_shapes, ctx):
    c = layer.config
    rank = len(in_shapes[0])
    if _axes(c.get("axis", -1), rank) != [rank - 1] or not (c.get("center", True) and c.get("scale", True)):
        raise unsupported(layer, "only the channels-last axis with center and scale maps to torch GroupNorm")
    channels = in_shapes[0][-1]
    gn = nn.GroupNorm(int(c.get("groups", 32)), int(channels), eps=float(c.get("epsilon", 1e-3)))
    return Built(gn, "cf", "")


class _UnitNorm(nn.Module):
    def __init__(self, axes):
        super().__init__()
        self.axes = tuple(axes)

    def forward(self, x, **kwargs):
        return x / torch.sqrt(torch.clamp((x * x).sum(dim=self.axes, keepdim=True), min=1e-12))


@builds("UnitNormalization")
def _unit_norm(layer, in_shapes, ctx):
    return Built(_UnitNorm(_axes(layer.config.get("axis", -1), len(in_shapes[0]))), "cl")


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _export_batch_norm(ctx, node, module, args, kwargs, value):
    if not module.track_running_stats:
        raise ctx.fail("BatchNorm without running statistics normalises with batch statistics at inference")
    x = args[0]
    x = ctx.as_channels_last(x) if x.rank >= 3 else ctx.as_torch(x)
    momentum = 0.99 if module.momentum is None else 1.0 - float(module.momentum)
    # a BatchNorm built from a Keras config may have gamma or beta alone
    cfg = {"axis": -1, "momentum": momentum, "epsilon": float(module.eps), "center": module.bias is not None,
           "scale": module.weight is not None}  # fmt: skip
    source = WeightSource("", module, BatchNormAdapter(), 0, None)
    return ctx.add1("BatchNormalization", cfg, x, tuple(value.shape), x.perm, name=ctx.layer_name(node),
                    module=module, weights=source)  # fmt: skip


def _channels_layer_norm(module) -> bool:
    """torchvision's ``LayerNorm2d`` (ConvNeXt): a LayerNorm over the channel axis 1 of (N, C, H, W)."""
    cls = type(module)
    return cls.__name__ == "LayerNorm2d" and cls.__module__.startswith("torchvision.")


@exports(nn.LayerNorm)
def _export_layer_norm(ctx, node, module, args, kwargs, value):
    if _channels_layer_norm(module):  # normalise the channel axis where it is: channels-last, Keras axis -1
        x = ctx.as_channels_last(args[0])
        if x.rank != 4 or len(module.normalized_shape) != 1:
            raise ctx.fail("LayerNorm2d of a tensor that is not (N, C, H, W)")
        axes = [x.keras_axis(1)]
    elif type(module).forward is not nn.LayerNorm.forward:
        raise ctx.fail(f"{type(module).__name__} overrides LayerNorm.forward; its normalised axes are unknown")
    else:
        x = ctx.as_torch(args[0])
        k = len(module.normalized_shape)
        axes = list(range(x.rank - k, x.rank))
    k = len(axes)
    affine = module.elementwise_affine
    cfg = {"axis": axes if k > 1 else axes[0], "epsilon": float(module.eps), "center": module.bias is not None,
           "scale": module.weight is not None}  # fmt: skip
    source = WeightSource("", module, LayerNormAdapter(), 0, None) if affine else None
    return ctx.add1("LayerNormalization", cfg, x, tuple(value.shape), x.perm, name=ctx.layer_name(node),
                    module=module, weights=source)  # fmt: skip


_export_layer_norm.accepts = _channels_layer_norm  # overrides forward, handled above (registry.exporter_for)


@exports(nn.GroupNorm)
def _export_group_norm(ctx, node, module, args, kwargs, value):
    x = ctx.as_channels_last(args[0])
    cfg = {"groups": module.num_groups, "axis": -1, "epsilon": float(module.eps), "center": module.affine,
           "scale": module.affine}  # fmt: skip
    source = WeightSource("", module, GroupNormAdapter(), 0, None) if module.affine else None
    return ctx.add1("GroupNormalization", cfg, x, tuple(value.shape), x.perm, name=ctx.layer_name(node),
                    module=module, weights=source)  # fmt: skip
