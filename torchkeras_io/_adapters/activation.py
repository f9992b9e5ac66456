"""nn.PReLU <-> PReLU.

Keras's ``alpha`` has the input's per-sample shape with 1 on shared axes; torch keeps one slope
per channel (or one in all). Without the input rank we write ``(C,)``; with it (``ctx``) the
channels-last shape Keras builds, e.g. ``(1, 1, C)`` for images.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, KerasLayer, lazy_param, owns_exactly


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
