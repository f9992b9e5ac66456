"""nn.Linear <-> Dense: kernel (in, out) = weight.T."""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.activation import with_activation
from torchkeras_io._layers.base import Adapter, KerasLayer, lazy_param, owns_exactly
from torchkeras_io._layers.registry import WeightSource, adapts, builds, exports, unsupported


@adapts
class DenseAdapter(Adapter):
    family = "dense"

    def match(self, module):
        return isinstance(module, nn.Linear) and owns_exactly(module, ["weight"], ["bias"])

    def export(self, module, ctx=None):
        weights = [lazy_param(module, "weight", "kernel", lambda w: w.t())]
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "bias"))
        return [KerasLayer("Dense", weights)]

    def load(self, module, index, weights, extras):
        out = {"weight": weights[0].map(lambda k: k.t())}
        if module.bias is not None:
            out["bias"] = weights[1]
        return out


@builds("Dense")
def _dense(layer, in_shapes, ctx):
    c = layer.config
    fan_in = in_shapes[0][-1]
    if fan_in is None:
        raise unsupported(layer, f"input's last axis is unknown: {in_shapes[0]}")
    linear = nn.Linear(int(fan_in), int(c["units"]), bias=bool(c.get("use_bias", True)))
    built = with_activation(linear, c, ctx, "cl")
    built.mask = "pass"
    return built


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.Linear)
def _export_linear(ctx, node, module, args, kwargs, value):
    x = ctx.as_torch(args[0])  # Dense acts on the last axis, as Linear does on torch's
    cfg = {"units": module.out_features, "activation": "linear", "use_bias": module.bias is not None}
    source = WeightSource("", module, DenseAdapter(), 0, None)
    return ctx.add1(
        "Dense", cfg, x, tuple(value.shape), x.perm, name=ctx.layer_name(node), module=module, weights=source
    )
