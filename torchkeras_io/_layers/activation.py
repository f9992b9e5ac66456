"""nn.PReLU <-> PReLU.

Keras's ``alpha`` has the input's per-sample shape with 1 on shared axes; torch keeps one slope
per channel (or one in all). Without the input rank we write ``(C,)``; with it (``ctx``) the
channels-last shape Keras builds, e.g. ``(1, 1, C)`` for images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._layers.base import Adapter, KerasLayer, lazy_param, owns_exactly
from torchkeras_io._layers.registry import Built, WeightSource, adapts, builds, exports, exports_function, unsupported
from torchkeras_io._layers.trace import gelu_tanh
from torchkeras_io.modules import HardSigmoidTF, KerasReLU, ThresholdedReLU


@adapts
class PReLUAdapter(Adapter):
    family = "activation"

    def match(self, module):
        return isinstance(module, nn.PReLU) and owns_exactly(module, ["weight"])

    def export(self, module, ctx=None):
        n = module.weight.numel()
        rank = (ctx or {}).get("input_rank")  # rank including the batch axis
        shape = (n,) if not rank or rank < 2 else (1,) * (rank - 2) + (n,)
        return [KerasLayer("PReLU", [lazy_param(module, "weight", "alpha", lambda w: w.reshape(shape), shape)])]

    def normalize(self, module, index, weights, extras, info):
        n = module.weight.numel()
        if len(weights) == 1 and weights[0].numel() == n and weights[0].shape != (n,):
            # (1, 1, C), (1, C), (1,) … carry one slope per channel in channel order
            spec = self.export(module)[0].weights[0].shape
            weights = [weights[0].map(lambda a: a.reshape(spec), spec)]
        return weights, extras

    def load(self, module, index, weights, extras):
        return {"weight": weights[0].map(lambda a: a.reshape(module.weight.shape))}


# ------------------------------------------------------------------------------- config -> torch
class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class _Fn(nn.Module):
    """A Keras 3 element-wise activation torch.nn has no module for (by name)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        if self.name == "squareplus":  # b = 4, Keras's default
            return (x + torch.sqrt(x * x + 4.0)) / 2
        if self.name == "sparse_plus":
            return torch.where(x <= -1, torch.zeros_like(x), torch.where(x < 1, 0.25 * (x + 1) ** 2, x))
        if self.name == "sparse_sigmoid":
            return torch.clamp(0.5 * (x + 1), 0.0, 1.0)
        raise ValueError(f"unknown activation '{self.name}'")

    def extra_repr(self) -> str:
        return self.name


class _Sparsemax(nn.Module):
    """Keras 3 ``sparsemax`` over the last axis."""

    def forward(self, x):
        z, _ = torch.sort(x, dim=-1, descending=True)
        cumsum = torch.cumsum(z, dim=-1)
        r = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        support = z - (cumsum - 1) / r > 0
        k = support.sum(dim=-1, keepdim=True)
        tau = (torch.where(support, cumsum, torch.zeros_like(cumsum)).sum(dim=-1, keepdim=True) - 1) / k
        return torch.clamp(x - tau, min=0.0)


def activation_module(spec, generation: int) -> tuple:
    """(module, layout) for a Keras activation given by name (or serialized function)."""
    name = spec
    if isinstance(spec, dict):  # Keras 3 may serialize a function as {"class_name": "function", "config": "relu"}
        name = spec.get("config") if isinstance(spec.get("config"), str) else spec.get("class_name")
    if name is None:
        name = "linear"
    if not isinstance(name, str):
        raise ValueError(f"unreadable activation {spec!r}")
    name = name.rsplit(">", 1)[-1].rsplit(".", 1)[-1]
    if name in ("softmax", "log_softmax"):
        return (nn.Softmax(dim=-1) if name == "softmax" else nn.LogSoftmax(dim=-1)), "cl"
    if name in ("glu", "sparsemax"):  # over the last axis, like softmax
        return (nn.GLU(dim=-1) if name == "glu" else _Sparsemax()), "cl"
    if name in ("squareplus", "sparse_plus", "sparse_sigmoid"):
        return _Fn(name), "any"
    if name == "hard_sigmoid":
        return (HardSigmoidTF() if generation <= 2 else nn.Hardsigmoid()), "any"
    table = {
        "linear": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "elu": nn.ELU, "selu": nn.SELU,
        "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus, "softsign": nn.Softsign,
        "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish, "exponential": _Exp,
        "hard_silu": nn.Hardswish, "hard_swish": nn.Hardswish,
        "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh_shrink": nn.Tanhshrink, "celu": nn.CELU,
        "log_sigmoid": nn.LogSigmoid, "hard_tanh": nn.Hardtanh, "hard_shrink": lambda: nn.Hardshrink(0.5),
        "soft_shrink": lambda: nn.Softshrink(0.5),
    }  # fmt: skip
    if name not in table:
        raise ValueError(f"unknown activation '{name}'")
    return table[name](), "any"


def with_activation(module: nn.Module, layer_cfg: dict, ctx, layout: str) -> Built:
    """The layer module followed by its ``activation`` (weights stay at path "0" or "")."""
    act, act_layout = activation_module(layer_cfg.get("activation", "linear"), ctx.generation)
    if isinstance(act, nn.Identity):
        return Built(module, layout, "")
    if act_layout == "cl" and layout == "cf":
        act = ChannelsFirstSoftmax(act)
    return Built(nn.Sequential(module, act), layout, "0")


class ChannelsFirstSoftmax(nn.Module):
    """Keras softmax over its last axis, applied to a channels-first tensor."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x.movedim(1, -1)).movedim(-1, 1) if x.dim() >= 3 else self.fn(x)


@builds("Activation")
def _activation(layer, in_shapes, ctx):
    module, layout = activation_module(layer.config.get("activation"), ctx.generation)
    return Built(module, layout, mask="pass")


@builds("ReLU")
def _relu(layer, in_shapes, ctx):
    c = layer.config
    slope = c.get("negative_slope", c.get("alpha", 0.0)) or 0.0
    max_value, threshold = c.get("max_value"), c.get("threshold", 0.0) or 0.0
    if not slope and not threshold and max_value is None:
        return Built(nn.ReLU(), "any")
    if not slope and not threshold and max_value == 6:
        return Built(nn.ReLU6(), "any")
    return Built(KerasReLU(max_value, slope, threshold), "any")


@builds("LeakyReLU")
def _leaky(layer, in_shapes, ctx):
    c = layer.config
    return Built(nn.LeakyReLU(float(c.get("negative_slope", c.get("alpha", 0.3)))), "any")


@builds("ELU")
def _elu(layer, in_shapes, ctx):
    return Built(nn.ELU(float(layer.config.get("alpha", 1.0))), "any")


@builds("ThresholdedReLU")
def _thresholded(layer, in_shapes, ctx):
    return Built(ThresholdedReLU(float(layer.config.get("theta", 1.0))), "any")


@builds("Softmax")
def _softmax(layer, in_shapes, ctx):
    axis = layer.config.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise unsupported(layer, "softmax over several axes")
        axis = axis[0]
    return Built(nn.Softmax(dim=int(axis)), "cl")


class KerasPReLU(nn.Module):
    """Keras PReLU with one slope per element of its ``alpha`` shape (when torch's per-channel slope can't say it)."""

    def __init__(self, shape):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(tuple(shape)))

    def forward(self, x):
        return torch.relu(x) - self.alpha * torch.relu(-x)


@builds("PReLU")
def _prelu(layer, in_shapes, ctx):
    shape = in_shapes[0][1:]
    if any(s is None for s in shape):
        raise unsupported(layer, f"needs a fully known input shape, got {in_shapes[0]}")
    shared = layer.config.get("shared_axes") or []
    shared = [int(a) for a in (shared if isinstance(shared, list) else [shared])]
    alpha = [1 if (i + 1) in shared else s for i, s in enumerate(shape)]
    if all(a == 1 for a in alpha[:-1]):
        n = alpha[-1]
        return Built(nn.PReLU(n, init=0.0), "cf" if len(shape) >= 2 and n > 1 else "cl", "")
    return Built(KerasPReLU(alpha), "cl", "")


# ------------------------------------------------------------------------------- torch -> config
_SIMPLE = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SELU: "selu", nn.SiLU: "swish",
           nn.Softplus: "softplus", nn.Softsign: "softsign"}  # fmt: skip


@exports(*_SIMPLE)
def _export_simple(ctx, node, module, args, kwargs, value):
    if isinstance(module, nn.Softplus) and module.beta != 1:
        raise ctx.fail("Softplus with beta != 1")
    x = args[0]
    return ctx.add1("Activation", {"activation": _SIMPLE[type(module)]}, x, tuple(value.shape), x.perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.GELU)
def _export_gelu(ctx, node, module, args, kwargs, value):
    if module.approximate == "tanh":  # no activation name for it: each Keras's own gelu op (approximate=True)
        return gelu_tanh(ctx, args[0], value, ctx.layer_name(node))
    return ctx.add1("Activation", {"activation": "gelu"}, args[0], tuple(value.shape), args[0].perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.ReLU6)
def _export_relu6(ctx, node, module, args, kwargs, value):
    return ctx.add1("ReLU", {"max_value": 6.0}, args[0], tuple(value.shape), args[0].perm, name=ctx.layer_name(node))


@exports(nn.LeakyReLU)
def _export_leaky(ctx, node, module, args, kwargs, value):
    # "alpha": the tf-keras name, which Keras 3 still accepts
    return ctx.add1("LeakyReLU", {"alpha": float(module.negative_slope)}, args[0], tuple(value.shape), args[0].perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.ELU)
def _export_elu(ctx, node, module, args, kwargs, value):
    return ctx.add1("ELU", {"alpha": float(module.alpha)}, args[0], tuple(value.shape), args[0].perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.Softmax)
def _export_softmax(ctx, node, module, args, kwargs, value):
    if module.dim is None:
        raise ctx.fail("Softmax without an explicit dim")
    x = args[0]
    return ctx.add1("Softmax", {"axis": x.keras_axis(module.dim)}, x, tuple(value.shape), x.perm,
                    name=ctx.layer_name(node))  # fmt: skip


def _hard_sigmoid(ctx, x, shape, name):
    """relu6(x + 3) / 6 from layers both Keras generations have (their hard_sigmoid differ)."""
    t = ctx.add1("Rescaling", {"scale": 1.0, "offset": 3.0}, x, shape, x.perm, name=f"{name}_shift")
    t = ctx.add1("ReLU", {"max_value": 6.0}, t, shape, x.perm, name=f"{name}_relu6")
    return ctx.add1("Rescaling", {"scale": 1.0 / 6.0, "offset": 0.0}, t, shape, x.perm, name=name)


@exports(nn.Hardsigmoid)
def _export_hardsigmoid(ctx, node, module, args, kwargs, value):
    return _hard_sigmoid(ctx, args[0], tuple(value.shape), ctx.layer_name(node))


@exports(nn.Hardswish)
def _export_hardswish(ctx, node, module, args, kwargs, value):
    x, name = args[0], ctx.layer_name(node)
    gate = _hard_sigmoid(ctx, x, tuple(value.shape), f"{name}_gate")
    return ctx.add("Multiply", {}, [x, gate], [(tuple(value.shape), x.perm, x.dtype)], name=name)[0]


@exports(nn.Mish)
def _export_mish(ctx, node, module, args, kwargs, value):
    x, name, shape = args[0], ctx.layer_name(node), tuple(value.shape)
    t = ctx.add1("Activation", {"activation": "softplus"}, x, shape, x.perm, name=f"{name}_softplus")
    t = ctx.add1("Activation", {"activation": "tanh"}, t, shape, x.perm, name=f"{name}_tanh")
    return ctx.add("Multiply", {}, [x, t], [(shape, x.perm, x.dtype)], name=name)[0]


@exports(nn.PReLU)
def _export_prelu(ctx, node, module, args, kwargs, value):
    x = args[0]
    rank = x.rank
    x = ctx.as_channels_last(x) if rank >= 3 else ctx.as_torch(x)
    n = module.weight.numel()
    shared = list(range(1, rank - 1)) if n > 1 else list(range(1, rank))
    source = WeightSource("", module, PReLUAdapter(), 0, {"input_rank": rank})
    return ctx.add1("PReLU", {"shared_axes": shared or None}, x, tuple(value.shape), x.perm,
                    name=ctx.layer_name(node), module=module, weights=source)  # fmt: skip


# functional forms (``F.hardsigmoid(x)``, ...): the same layers as the modules
@exports_function(F.hardsigmoid)
def _export_hardsigmoid_fn(ctx, node, args, kwargs, value):
    return _hard_sigmoid(ctx, args[0], tuple(value.shape), node.name)


@exports_function(F.hardswish)
def _export_hardswish_fn(ctx, node, args, kwargs, value):
    x = args[0]
    gate = _hard_sigmoid(ctx, x, tuple(value.shape), f"{node.name}_gate")
    return ctx.add("Multiply", {}, [x, gate], [(tuple(value.shape), x.perm, x.dtype)], name=node.name)[0]


@exports_function(F.hardtanh, F.relu6)
def _export_hardtanh_fn(ctx, node, args, kwargs, value):
    if node.target is F.relu6:
        lo, hi = 0.0, 6.0
    else:
        lo = float(args[1] if len(args) > 1 else kwargs.get("min_val", -1.0))
        hi = float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0))
    if lo != 0.0:
        raise ctx.fail(f"hardtanh with min_val={lo} (Keras's ReLU clips at 0)")
    return ctx.add1("ReLU", {"max_value": hi}, args[0], tuple(value.shape), args[0].perm, name=node.name)


@exports(nn.Hardtanh)
def _export_hardtanh(ctx, node, module, args, kwargs, value):
    if module.min_val != 0.0:
        raise ctx.fail(f"Hardtanh with min_val={module.min_val} (Keras's ReLU clips at 0)")
    return ctx.add1("ReLU", {"max_value": float(module.max_val)}, args[0], tuple(value.shape), args[0].perm,
                    name=ctx.layer_name(node))  # fmt: skip
