"""Normalization: BatchNorm{1,2,3}d <-> BatchNormalization, LayerNorm, GroupNorm.

BatchNormalization keeps gamma, beta (when affine), moving_mean, moving_variance in that order;
torch's ``num_batches_tracked`` has no Keras slot and travels as a torch extra.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .base import Adapter, KerasLayer, lazy_param, owns_exactly


class BatchNormAdapter(Adapter):
    family = "norm"

    def match(self, module):
        return (
            isinstance(module, _BatchNorm)
            and module.track_running_stats
            and owns_exactly(module, ["running_mean", "running_var"], ["weight", "bias", "num_batches_tracked"])
            and (module.weight is None) == (module.bias is None)
        )

    def export(self, module, ctx=None):
        weights = []
        if module.weight is not None:
            weights += [lazy_param(module, "weight", "gamma"), lazy_param(module, "bias", "beta")]
        weights += [
            lazy_param(module, "running_mean", "moving_mean"),
            lazy_param(module, "running_var", "moving_variance"),
        ]
        extras = []
        if module.num_batches_tracked is not None:
            extras.append(lazy_param(module, "num_batches_tracked", "num_batches_tracked"))
        return [KerasLayer("BatchNormalization", weights, extras, ("moving_mean", "moving_variance"))]

    def load(self, module, index, weights, extras):
        names = (["weight", "bias"] if module.weight is not None else []) + ["running_mean", "running_var"]
        out = dict(zip(names, weights))
        if "num_batches_tracked" in extras and module.num_batches_tracked is not None:
            out["num_batches_tracked"] = extras["num_batches_tracked"]
        return out


class LayerNormAdapter(Adapter):
    family = "norm"

    def match(self, module):
        return isinstance(module, nn.LayerNorm) and owns_exactly(module, ["weight"], ["bias"])

    def export(self, module, ctx=None):
        weights = [lazy_param(module, "weight", "gamma")]
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "beta"))
        return [KerasLayer("LayerNormalization", weights)]

    def load(self, module, index, weights, extras):
        return dict(zip(["weight", "bias"], weights))


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
