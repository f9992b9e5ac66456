"""Convolutions: nn.ConvNd <-> ConvND / DepthwiseConvND, nn.ConvTransposeNd <-> ConvNDTranspose.

Keras kernels are channels-last whatever the data format:
ConvND ``(k..., in/groups, out)``, DepthwiseConvND ``(k..., in, depth_multiplier)``,
ConvNDTranspose ``(k..., out, in)``. torch: ConvNd ``(out, in/groups, k...)``,
ConvTransposeNd ``(in, out/groups, k...)``. Both are cross-correlations: no spatial flip.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, KerasLayer, lazy_param, owns_exactly


def _to_keras_perm(rank: int) -> tuple:
    """torch (A, B, k1..kr) -> Keras (k1..kr, B, A)."""
    return tuple(range(2, rank + 2)) + (1, 0)


def _to_torch_perm(rank: int) -> tuple:
    """Keras (k1..kr, B, A) -> torch (A, B, k1..kr)."""
    return (rank + 1, rank) + tuple(range(rank))


def is_depthwise(module: nn.Module) -> bool:
    """A grouped conv with one input channel per group maps to Keras DepthwiseConv1D/2D."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d))
        and module.groups > 1
        and module.groups == module.in_channels
        and module.out_channels % module.in_channels == 0
    )


class ConvAdapter(Adapter):
    family = "conv"

    def match(self, module):
        return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and owns_exactly(module, ["weight"], ["bias"])

    def export(self, module, ctx=None):
        rank = module.weight.dim() - 2
        if is_depthwise(module):
            cin = module.in_channels
            dm = module.out_channels // cin
            ks = tuple(module.weight.shape[2:])
            shape = ks + (cin, dm)
            kernel = lazy_param(
                module, "weight", "depthwise_kernel", lambda w: w.permute(_to_keras_perm(rank)).reshape(shape), shape
            )
            cls = f"DepthwiseConv{rank}D"
        else:
            kernel = lazy_param(module, "weight", "kernel", lambda w: w.permute(_to_keras_perm(rank)))
            cls = f"Conv{rank}D"
        weights = [kernel]
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "bias"))
        return [KerasLayer(cls, weights)]

    def normalize(self, module, index, weights, extras, info):
        if not weights:
            return weights, extras
        spec = self.export(module)[0].weights[0].shape
        k = weights[0]
        rank = module.weight.dim() - 2
        if k.shape != spec and len(spec) == 3 and len(k.shape) == 4:
            # Keras 1 Convolution1D: (k, 1, in, out), or Theano-ordered (out, in, k, 1)
            if k.shape[1] == 1 and k.shape[0] == spec[0]:
                k = k.map(lambda a: a[:, 0])
            else:
                k = k.map(lambda a: a.permute(2, 3, 1, 0)[:, 0])
        elif k.shape != spec and len(k.shape) == len(spec):
            # Keras 1 'th' dim ordering: (out, in, k...) — the torch layout
            perm = _to_keras_perm(rank)
            if tuple(k.shape[p] for p in perm) == spec:
                k = k.map(lambda a: a.permute(perm))
        return [k] + list(weights[1:]), extras

    def load(self, module, index, weights, extras):
        rank = module.weight.dim() - 2
        if is_depthwise(module):
            ks = tuple(module.weight.shape[2:])
            flat = ks + (1, module.out_channels)
            out = {"weight": weights[0].map(lambda k: k.reshape(flat).permute(_to_torch_perm(rank)))}
        else:
            out = {"weight": weights[0].map(lambda k: k.permute(_to_torch_perm(rank)))}
        if module.bias is not None:
            out["bias"] = weights[1]
        return out


class ConvTransposeAdapter(Adapter):
    family = "conv"

    def match(self, module):
        return (
            isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            and module.groups == 1  # Keras transposed convolutions have no groups
            and owns_exactly(module, ["weight"], ["bias"])
        )

    def export(self, module, ctx=None):
        rank = module.weight.dim() - 2
        weights = [lazy_param(module, "weight", "kernel", lambda w: w.permute(_to_keras_perm(rank)))]
        if module.bias is not None:
            weights.append(lazy_param(module, "bias", "bias"))
        return [KerasLayer(f"Conv{rank}DTranspose", weights)]

    def normalize(self, module, index, weights, extras, info):
        if weights and info.is_keras1 and module.weight.dim() == 4:
            spec = self.export(module)[0].weights[0].shape
            k = weights[0]
            if k.shape != spec and (k.shape[0], k.shape[1], k.shape[3], k.shape[2]) == spec:
                weights = [k.map(lambda a: a.permute(0, 1, 3, 2))] + list(weights[1:])
        return weights, extras

    def load(self, module, index, weights, extras):
        rank = module.weight.dim() - 2
        out = {"weight": weights[0].map(lambda k: k.permute(_to_torch_perm(rank)))}
        if module.bias is not None:
            out["bias"] = weights[1]
        return out
