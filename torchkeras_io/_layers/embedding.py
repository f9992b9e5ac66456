"""nn.Embedding <-> Embedding: the table has the same (vocab, dim) layout on both sides."""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.base import Adapter, KerasLayer, lazy_param, owns_exactly
from torchkeras_io._layers.registry import Built, WeightSource, adapts, builds, exports
from torchkeras_io.modules import Embedding


@adapts
class EmbeddingAdapter(Adapter):
    family = "embedding"

    def match(self, module):
        return isinstance(module, nn.Embedding) and owns_exactly(module, ["weight"])

    def export(self, module, ctx=None):
        return [KerasLayer("Embedding", [lazy_param(module, "weight", "embeddings")])]

    def load(self, module, index, weights, extras):
        return {"weight": weights[0]}


@builds("Embedding")
def _embedding(layer, in_shapes, ctx):
    c = layer.config
    mask_zero = bool(c.get("mask_zero", False))
    return Built(Embedding(int(c["input_dim"]), int(c["output_dim"]), mask_zero=mask_zero), "cl", "",
                 mask="compute" if mask_zero else "drop")  # fmt: skip


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.Embedding)
def _export_embedding(ctx, node, module, args, kwargs, value):
    if module.max_norm is not None:
        raise ctx.fail("Embedding(max_norm=...) renormalises rows in forward; Keras has no such layer")
    x = ctx.as_torch(args[0])
    cfg = {"input_dim": module.num_embeddings, "output_dim": module.embedding_dim}
    source = WeightSource("", module, EmbeddingAdapter(), 0, None)
    return ctx.add1("Embedding", cfg, x, tuple(value.shape), x.perm + (x.rank,), name=ctx.layer_name(node),
                    module=module, weights=source)  # fmt: skip
