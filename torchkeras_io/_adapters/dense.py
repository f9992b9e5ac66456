"""nn.Linear <-> Dense: kernel (in, out) = weight.T."""

from __future__ import annotations

from torch import nn

from .base import Adapter, KerasLayer, lazy_param, owns_exactly


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
