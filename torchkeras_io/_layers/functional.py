"""Exporters of torch functions called in ``forward`` (``F.dropout``, torchvision's ``stochastic_depth``, ...).

The exported model describes inference: modules are traced in eval mode, so ``training=self.training``
arguments arrive as False and the regularisers below are identities there.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from torchkeras_io._layers.pooling import bind_args
from torchkeras_io._layers.registry import exports_function

_DROPOUTS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


@exports_function(*_DROPOUTS)
def _export_dropout_fn(ctx, node, args, kwargs, value):
    a = bind_args(("input", "p", "training", "inplace"), args, kwargs, {"p": 0.5, "training": True})
    x = a["input"]
    if not a["training"] or not a["p"]:
        return x
    # dropout that torch applies even in eval mode (``training=True``): Keras's Dropout, which drops in training
    cls = "AlphaDropout" if node.target in (F.alpha_dropout, F.feature_alpha_dropout) else "Dropout"
    return ctx.add1(cls, {"rate": float(a["p"])}, x, tuple(value.shape), x.perm, name=node.name)


@exports_function("torchvision.ops.stochastic_depth.stochastic_depth")
def _export_stochastic_depth(ctx, node, args, kwargs, value):
    a = bind_args(("input", "p", "mode", "training"), args, kwargs, {"training": True})
    if a["training"] and a["p"]:
        raise ctx.fail("stochastic depth in training mode (put the module in eval mode: it is the identity there)")
    return a["input"]


# ------------------------------------------------------------ functional layers with module parameters
# ``F.conv2d(x, self.weight, self.bias, ...)``, ``F.linear``, ``F.batch_norm``, ``F.layer_norm``,
# ``F.group_norm`` whose tensors are all one module's parameters/buffers (a traced-into subclass of
# Conv2d/BatchNorm/LayerNorm, or a hand-written layer) become calls of the standard torch module on
# those same tensors, placed at the owner's path: the Keras layer is then the usual ConvND / Dense /
# BatchNormalization / ..., named by the owner (so by-name loading pairs it), with real weights.


class _AnyRankBatchNorm(nn.BatchNorm2d):
    """``F.batch_norm`` as a module: BatchNorm2d's own forward, for inputs of any rank >= 2."""

    def _check_input_dim(self, input):  # F.batch_norm takes any rank; the forward is BatchNorm2d's
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


_CONV_FNS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d, torch.conv1d: nn.Conv1d,
             torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d}  # fmt: skip
_SIGNATURES = {
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "linear": ("input", "weight", "bias"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
}
_TENSOR_ARGS = {"weight", "bias", "running_mean", "running_var"}


def _kind(target) -> Optional[str]:
    if target in _CONV_FNS:
        return "conv"
    return {F.linear: "linear", F.batch_norm: "batch_norm", torch.batch_norm: "batch_norm", F.layer_norm: "layer_norm",
            torch.layer_norm: "layer_norm", F.group_norm: "group_norm", torch.group_norm: "group_norm"}.get(target)  # fmt: skip


def _standard_module(kind: str, target, a: dict, tensors: dict) -> Optional[nn.Module]:
    """The torch module computing the call, holding the owner's own tensor objects."""
    w = tensors.get("weight")
    with torch.no_grad():
        if kind == "conv":
            m = _CONV_FNS[target](w.shape[1] * int(a.get("groups", 1)), w.shape[0], tuple(w.shape[2:]),
                                  stride=a.get("stride", 1), padding=a.get("padding", 0),
                                  dilation=a.get("dilation", 1), groups=int(a.get("groups", 1)),
                                  bias=tensors.get("bias") is not None, device="meta")  # fmt: skip
        elif kind == "linear":
            m = nn.Linear(w.shape[1], w.shape[0], bias=tensors.get("bias") is not None, device="meta")
        elif kind == "batch_norm":
            if a.get("training", False):
                return None  # batch statistics at inference: not a BatchNormalization layer
            c = tensors["running_mean"].shape[0]
            m = _AnyRankBatchNorm(c, eps=float(a.get("eps", 1e-5)), momentum=a.get("momentum", 0.1),
                                  affine=w is not None, device="meta")  # fmt: skip
            if (w is None) != (tensors.get("bias") is None):
                m.register_parameter("bias" if w is not None else "weight", None)
        elif kind == "layer_norm":
            m = nn.LayerNorm(a["normalized_shape"], eps=float(a.get("eps", 1e-5)), elementwise_affine=w is not None,
                             bias=tensors.get("bias") is not None, device="meta")  # fmt: skip
            if w is None and tensors.get("bias") is not None:
                return None  # bias without weight: no torch LayerNorm holds that
        else:
            if (w is None) != (tensors.get("bias") is None):
                return None
            m = nn.GroupNorm(int(a["num_groups"]), w.shape[0] if w is not None else 1, eps=float(a.get("eps", 1e-5)),
                             affine=w is not None, device="meta")  # fmt: skip
            if w is None:
                return None  # the channel count is unknown here; GroupNorm without affine has its own exporter path
    for name, t in tensors.items():
        if t is None:
            continue
        if name in ("running_mean", "running_var"):
            m._buffers[name] = t
        else:
            m._parameters[name] = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
    if kind == "batch_norm":
        m._buffers["num_batches_tracked"] = None
    return m.eval()  # the export runs inference; a training-mode BatchNorm would update the owner's statistics


def modules_for_functional_calls(gm) -> None:
    """Rewrite functional layer calls on one module's tensors into calls of the standard module (in place)."""
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        kind = _kind(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        a = dict(zip(_SIGNATURES[kind], node.args))
        a.update(node.kwargs)
        params = {k: v for k, v in a.items() if k in _TENSOR_ARGS and v is not None}
        if not params or not all(isinstance(v, torch.fx.Node) and v.op == "get_attr" for v in params.values()):
            continue
        for v in params.values():
            _inline_shape_reads(gm, v)
        owners = {str(v.target).rpartition(".")[0] for v in params.values()}
        owner = owners.pop() if len(owners) == 1 else ""
        if not owner or any(len(v.users) != 1 for v in params.values()):
            continue  # the root's own tensors, several owners, or tensors used elsewhere: left to the generic path
        if any(isinstance(v, torch.fx.Node) for k, v in a.items() if k not in _TENSOR_ARGS | {"input"}):
            continue  # geometry computed in the graph
        if any(n.target == owner for n in graph.nodes if n.op in ("get_attr", "call_module")):
            continue  # the owner itself is called or read
        tensors = {}
        for k, v in params.items():
            tensors[k] = gm.get_parameter(v.target) if _is_param(gm, v.target) else gm.get_buffer(v.target)
        module = _standard_module(kind, node.target, a, tensors)
        if module is None:
            continue
        parent_path, _, leaf = owner.rpartition(".")
        parent = gm.get_submodule(parent_path) if parent_path else gm
        old = getattr(parent, leaf)
        if not _adopt(module, old, {str(v.target).rpartition(".")[2] for v in params.values()}):
            continue  # the owner's other tensors would clash with the standard module's
        setattr(parent, leaf, module)
        with graph.inserting_before(node):
            call = graph.call_module(owner, (a["input"],))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for v in params.values():
            graph.erase_node(v)
        changed = True
    if changed:
        gm.recompile()


def _adopt(module: nn.Module, old: nn.Module, consumed: set) -> bool:
    """Give ``module`` the children and other tensors the owner keeps in the graph module (timm's
    BatchNormAct2d calls ``self.act`` after its ``F.batch_norm``); False where names clash."""
    own = set(module._parameters) | set(module._buffers) | set(module._modules)
    extra = {**old._parameters, **old._buffers, **old._modules}
    if any(name in own for name in extra if name not in consumed):
        return False
    for name, child in old._modules.items():
        module.add_module(name, child)
    for name, t in old._parameters.items():
        if name not in consumed:
            module.register_parameter(name, t)
    for name, t in old._buffers.items():
        if name not in consumed:
            module.register_buffer(name, t)
    return True


def _is_param(gm, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _inline_shape_reads(gm, node) -> None:
    """Replace ``self.weight.shape`` / ``.size()`` / ``.dim()`` reads of a tensor attribute by their constants."""
    tensor = gm.get_parameter(node.target) if _is_param(gm, node.target) else gm.get_buffer(node.target)
    for user in list(node.users):
        if user.op == "call_function" and user.target is getattr and user.args[1] in ("shape", "ndim", "dtype"):
            const = getattr(tensor, user.args[1])
        elif user.op == "call_method" and user.target in ("size", "dim", "numel") and user.args[0] is node:
            const = getattr(tensor, user.target)(*user.args[1:])
        else:
            continue
        for reader in list(user.users):
            reader.args = torch.fx.node.map_arg(reader.args, lambda a, u=user, c=const: c if a is u else a)
            reader.kwargs = torch.fx.node.map_arg(reader.kwargs, lambda a, u=user, c=const: c if a is u else a)
        if not user.users:
            gm.graph.erase_node(user)


@exports_function(F.interpolate)
def _export_interpolate(ctx, node, args, kwargs, value):
    """``F.interpolate`` by an integer factor: UpSamplingND (nearest; bilinear without align_corners)."""
    a = bind_args(("input", "size", "scale_factor", "mode", "align_corners"), args, kwargs,
                  {"mode": "nearest", "align_corners": None})  # fmt: skip
    x = ctx.as_channels_last(a["input"])
    rank = x.rank - 2
    factors = [o // i for o, i in zip(value.shape[2:], x.shape[2:])]
    if any(o != i * f for o, i, f in zip(value.shape[2:], x.shape[2:], factors)) or min(factors) < 1:
        raise ctx.fail("interpolation by a non-integer factor")
    mode = a["mode"]
    if mode == "nearest" or (mode == "bilinear" and rank == 2 and not a["align_corners"]):
        interpolation = "nearest" if mode == "nearest" else "bilinear"
    else:
        raise ctx.fail(f"interpolation mode '{mode}' (align_corners={a['align_corners']})")
    if all(f == 1 for f in factors):
        return x
    if rank == 1:
        return ctx.add1("UpSampling1D", {"size": factors[0]}, x, tuple(value.shape), x.perm, name=node.name)
    cfg = {"size": factors, "data_format": "channels_last"}
    if rank == 2:
        cfg["interpolation"] = interpolation
    return ctx.add1(f"UpSampling{rank}D", cfg, x, tuple(value.shape), x.perm, name=node.name)
