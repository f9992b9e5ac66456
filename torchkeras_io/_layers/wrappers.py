"""Keras ``TimeDistributed``: any layer (or whole model) applied to every time step."""

from __future__ import annotations

from typing import Optional

from torch import nn

from torchkeras_io._keras.config import LayerDef
from torchkeras_io._layers.registry import Built, builds, unsupported


class TimeDistributed(nn.Module):
    """Keras ``TimeDistributed``: ``layer`` applied to every step of (B, T, ...) as one (B*T, ...) batch.

    ``layout`` is what ``layer`` takes ("cl" Keras's, "cf" channels first, "any"), ``out_layout``
    what it returns when that differs; the wrapper itself takes and returns Keras's layout.
    """

    def __init__(self, layer: nn.Module, layout: str = "cl", out_layout: Optional[str] = None):
        super().__init__()
        self.layer, self.layout, self.out_layout = layer, layout, out_layout

    def forward(self, x, mask=None, training=None, **kwargs):
        b, t = x.shape[:2]
        y = x.reshape((b * t,) + tuple(x.shape[2:]))
        if self.layout == "cf" and y.dim() >= 3:
            y = y.movedim(-1, 1).contiguous()
        y = self.layer(y)
        if (self.out_layout or self.layout) == "cf" and y.dim() >= 3:
            y = y.movedim(1, -1)
        return y.reshape((b, t) + tuple(y.shape[1:]))


@builds("TimeDistributed")
def _time_distributed(layer, in_shapes, ctx):
    inner = layer.config.get("layer")
    if not isinstance(inner, dict) or "class_name" not in inner:
        raise unsupported(layer, "no wrapped layer in its config")
    shape = in_shapes[0]
    if len(shape) < 3:
        raise unsupported(layer, f"needs an input with a time axis, got {shape}")
    cls, cfg = inner["class_name"], inner.get("config", {})
    step_shapes = [(None,) + tuple(shape[2:])]
    sub = LayerDef(cls, f"{layer.name}/{cfg.get('name', cls)}", cfg)
    # the wrapped layer's own name, as Keras users name it, comes first
    custom = ctx.custom_objects.get(cfg.get("name")) or ctx.custom_objects.get(cls)
    if custom is not None:
        module = custom(dict(cfg))
        if not isinstance(module, nn.Module):
            raise unsupported(sub, "custom_objects factory did not return an nn.Module")
        built = Built(module, "cl", "" if any(True for _ in module.parameters()) else None)
    else:  # a registered class, or a whole model applied to every step
        built = ctx.build_nested(inner, sub.name, step_shapes)
    layout = "cl" if built.layout == "any" else built.layout
    weights = None if built.weights is None else ("layer" + (f".{built.weights}" if built.weights else ""))
    return Built(TimeDistributed(built.module, layout, built.out_layout), "cl", weights, mask="pass")
