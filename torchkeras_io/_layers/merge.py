"""Keras merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

import torch

from torchkeras_io._layers.registry import Built, builds
from torchkeras_io.modules import Merge

_MODES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
          "Maximum": "maximum", "Minimum": "minimum"}  # fmt: skip


_MASKED_VALUES = ("multiply", "maximum", "minimum")  # Keras 3 merges whose values depend on masks


class MaskedMerge(Merge):
    """A merge layer that also gives its output the Keras mask its inputs' masks make.

    Element-wise merges: Keras 3 ORs the masks (none when an input has none), Keras 2 / tf_keras
    ANDs those there are. Concatenate: the masks (all-true for an unmasked input) joined along the
    axis, then reduced over the last axis (Keras 3: any, Keras 2: all).
    """

    def __init__(self, mode: str, generation: int, keras_axis: int = -1, channels_first: bool = False, **kwargs):
        super().__init__(mode, **kwargs)
        self.generation, self.keras_axis, self.channels_first = generation, keras_axis, channels_first

    def forward(self, xs, mask=None, **kwargs):
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if self.generation >= 3 and self.mode in _MASKED_VALUES and any(m is not None for m in masks):
            return self._masked(list(xs), masks)
        return super().forward(xs)

    def _masked(self, xs, masks):
        """Keras 3 Multiply / Maximum / Minimum leave masked entries out of the result."""
        out = omask = None
        every = all(m is not None for m in masks)
        for x, m in zip(xs, masks):
            mb = None if m is None else m.bool().unsqueeze(-1).expand(x.shape)
            if self.mode == "multiply":
                if mb is not None:
                    x = torch.where(mb, x, torch.ones_like(x))
                    omask = mb if omask is None else (omask | mb) if every else None
                out = x if out is None else out * x
                continue
            if out is None:
                out, omask = x, mb
                continue
            if mb is not None:
                x = torch.where(mb, x, out)
            if omask is not None:
                out = torch.where(omask, out, x)
            omask = omask | mb if (mb is not None and omask is not None) else None
            out = torch.maximum(out, x) if self.mode == "maximum" else torch.minimum(out, x)
        if self.mode == "multiply" and every:
            out = torch.where(omask, out, torch.zeros_like(out))
        return out

    def compute_mask(self, xs, mask=None):
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if all(m is None for m in masks):
            return None
        if self.mode != "concat":
            if self.generation >= 3:
                if any(m is None for m in masks):
                    return None
                return torch.stack(torch.broadcast_tensors(*masks)).any(0)
            return torch.stack(torch.broadcast_tensors(*[m for m in masks if m is not None])).all(0)
        parts = []
        for x, m in zip(xs, masks):
            x = x.movedim(1, -1) if self.channels_first and x.dim() >= 3 else x  # masks are in Keras's layout
            if m is None:
                parts.append(torch.ones(x.shape, dtype=torch.bool, device=x.device))
            elif m.dim() < x.dim():
                m = m.unsqueeze(-1).bool()
                parts.append(m.expand(x.shape) if self.generation >= 3 else m)
            else:
                parts.append(m.bool())
        joined = torch.cat(parts, dim=self.keras_axis)
        return joined.any(-1) if self.generation >= 3 else joined.all(-1)


@builds(*_MODES)
def _elementwise(layer, in_shapes, ctx):
    mode = _MODES[layer.class_name]
    # Keras 3 Multiply/Maximum/Minimum read masks ((batch, steps) on sequences) against the Keras layout
    seq = ctx.generation >= 3 and mode in _MASKED_VALUES and len(in_shapes[0]) == 3
    return Built(MaskedMerge(mode, ctx.generation), "cl" if seq else "any", mask="compute")


@builds("Concatenate")
def _concat(layer, in_shapes, ctx):
    rank = len(in_shapes[0])
    axis = int(layer.config.get("axis", -1)) % rank
    if rank >= 4 and axis == rank - 1:  # images: stay channels-first, join on dim 1
        return Built(MaskedMerge("concat", ctx.generation, axis, True, axis=1), "cf", mask="compute")
    return Built(MaskedMerge("concat", ctx.generation, axis, axis=axis), "cl", mask="compute")


@builds("Dot")
def _dot(layer, in_shapes, ctx):
    return Built(Merge("dot", axes=layer.config.get("axes", -1), normalize=layer.config.get("normalize", False)), "cl")
