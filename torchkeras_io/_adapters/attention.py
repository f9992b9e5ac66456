"""nn.MultiheadAttention <-> MultiHeadAttention.

Keras keeps four EinsumDense sub-layers (query, key, value, attention_output) with kernels
``(E_in, H, d)`` and ``(H, d, E)`` and biases ``(H, d)`` / ``(E,)``. torch packs q, k, v into
``in_proj_weight (3E, E)`` (or separate ``q/k/v_proj_weight`` when kdim/vdim differ) with heads
as contiguous row blocks, and keeps the output projection in the ``out_proj`` Linear child.
"""

from __future__ import annotations

import torch
from torch import nn

from .._tensors import Lazy
from .base import Adapter, KerasLayer, combine, direct_tensors


class MultiheadAttentionAdapter(Adapter):
    family = "attention"
    claims_children = True

    def match(self, module):
        if not isinstance(module, nn.MultiheadAttention) or module.bias_k is not None:
            return False
        if (module.in_proj_bias is None) != (module.out_proj.bias is None):
            return False
        if list(n for n, _ in module.named_children()) != ["out_proj"] or direct_tensors(module.out_proj).keys() - {
            "weight",
            "bias",
        }:
            return False
        return module.embed_dim % module.num_heads == 0

    def _projections(self, module):
        """(keras sub-layer, torch weight name, row slice, in features) for q, k, v."""
        e = module.embed_dim
        if module._qkv_same_embed_dim:
            return [
                ("query", "in_proj_weight", slice(0, e), e),
                ("key", "in_proj_weight", slice(e, 2 * e), e),
                ("value", "in_proj_weight", slice(2 * e, 3 * e), e),
            ]
        return [
            ("query", "q_proj_weight", slice(None), e),
            ("key", "k_proj_weight", slice(None), module.kdim),
            ("value", "v_proj_weight", slice(None), module.vdim),
        ]

    def export(self, module, ctx=None):
        e, h = module.embed_dim, module.num_heads
        d = e // h
        weights = []
        for i, (name, attr, rows, fan_in) in enumerate(self._projections(module)):
            weights.append(
                Lazy.of(
                    f"{name}/kernel",
                    getattr(module, attr),
                    lambda w, rows=rows, fan_in=fan_in: w[rows].t().reshape(fan_in, h, d),
                    (fan_in, h, d),
                )
            )
            if module.in_proj_bias is not None:
                sl = slice(i * e, (i + 1) * e)
                weights.append(
                    Lazy.of(f"{name}/bias", module.in_proj_bias, lambda b, sl=sl: b[sl].reshape(h, d), (h, d))
                )
        weights.append(
            Lazy.of("attention_output/kernel", module.out_proj.weight, lambda w: w.t().reshape(h, d, e), (h, d, e))
        )
        if module.out_proj.bias is not None:
            weights.append(Lazy.of("attention_output/bias", module.out_proj.bias))
        return [KerasLayer("MultiHeadAttention", weights)]

    def load(self, module, index, weights, extras):
        e = module.embed_dim
        has_bias = module.in_proj_bias is not None
        step = 2 if has_bias else 1
        kernels = weights[0 : 3 * step : step]
        biases = weights[1 : 3 * step : step] if has_bias else []
        out = {}
        projections = self._projections(module)
        if module._qkv_same_embed_dim:
            out["in_proj_weight"] = combine(
                "in_proj_weight",
                (3 * e, e),
                kernels[0].dtype,
                kernels,
                lambda *ks: torch.cat([k.reshape(k.shape[0], -1).t() for k in ks]),
            )
        else:
            for (_, attr, _, fan_in), k in zip(projections, kernels):
                out[attr] = k.map(lambda a, fan_in=fan_in: a.reshape(fan_in, -1).t(), (e, fan_in))
        if has_bias:
            out["in_proj_bias"] = combine(
                "in_proj_bias", (3 * e,), biases[0].dtype, biases, lambda *bs: torch.cat([b.reshape(-1) for b in bs])
            )
        o = weights[3 * step]
        out["out_proj.weight"] = o.map(lambda a: a.reshape(e, e).t(), (e, e))
        if has_bias:
            out["out_proj.bias"] = weights[3 * step + 1]
        return out
