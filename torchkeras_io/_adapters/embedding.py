"""nn.Embedding <-> Embedding: the table has the same (vocab, dim) layout on both sides."""

from __future__ import annotations

from torch import nn

from .base import Adapter, KerasLayer, lazy_param, owns_exactly


class EmbeddingAdapter(Adapter):
    family = "embedding"

    def match(self, module):
        return isinstance(module, nn.Embedding) and owns_exactly(module, ["weight"])

    def export(self, module, ctx=None):
        return [KerasLayer("Embedding", [lazy_param(module, "weight", "embeddings")])]

    def load(self, module, index, weights, extras):
        return {"weight": weights[0]}
