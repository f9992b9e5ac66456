"""nn.Linear <-> Dense: kernel (in, out) = weight.T."""

from __future__ import annotations

from torch import nn

from .activation import with_activation
from .base import Adapter, KerasLayer, lazy_param, owns_exactly
from .registry import builds, unsupported


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
