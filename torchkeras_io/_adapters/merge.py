"""Keras merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

from ..modules import Merge
from .registry import Built, builds

_MODES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
          "Maximum": "maximum", "Minimum": "minimum"}  # fmt: skip


@builds(*_MODES)
def _elementwise(layer, in_shapes, ctx):
    return Built(Merge(_MODES[layer.class_name]), "any", mask="pass")


@builds("Concatenate")
def _concat(layer, in_shapes, ctx):
    rank = len(in_shapes[0])
    axis = int(layer.config.get("axis", -1)) % rank
    if rank >= 4 and axis == rank - 1:  # images: stay channels-first, join on dim 1
        return Built(Merge("concat", axis=1), "cf")
    return Built(Merge("concat", axis=axis), "cl")


@builds("Dot")
def _dot(layer, in_shapes, ctx):
    return Built(Merge("dot", axes=layer.config.get("axes", -1), normalize=layer.config.get("normalize", False)), "cl")
