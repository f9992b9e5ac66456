"""The layer classes keras.applications defines itself (Keras 3 and tf-keras alike).

They are public Keras code with fixed semantics, so they are built natively as the built-in
layers are, and their files load without ``custom_objects`` (which Keras itself needs for some):

- ``LayerScale`` (ConvNeXt): ``x * gamma``, one trainable ``gamma`` per channel (last axis).
- ``StochasticDepth`` (ConvNeXt with ``drop_path_rate``): drops whole residual paths in
  training only; the identity in inference.
- ``CustomScaleLayer`` (InceptionResNetV2; tf-keras registers it as ``Custom>CustomScaleLayer``):
  ``inputs[0] + inputs[1] * scale``.

A user's own class of the same name with other arguments is not taken for these: its config
must carry exactly the arguments the applications' class has, else the usual "pass
custom_objects" error stands.
"""

from __future__ import annotations

import torch
from torch import nn

from torchkeras_io._layers.registry import Built, builds, unsupported
from torchkeras_io.modules import Identity

#: the config keys Keras's base Layer.get_config writes, beside a class's own arguments
_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "batch_shape", "input_shape", "autocast"}


def _own_args(layer, expected: set) -> dict:
    own = {k: v for k, v in layer.config.items() if k not in _BASE_KEYS}
    if set(own) != expected:
        raise unsupported(layer, f"arguments {sorted(own)} are not those of keras.applications' "
                                 f"{layer.class_name.split('>')[-1]} {sorted(expected)}; pass custom_objects="
                                 f"{{'{layer.class_name}': factory}}")  # fmt: skip
    return own


def _number(layer, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise unsupported(layer, f"{what} is {value!r}, not a number")
    return float(value)


class LayerScale(nn.Module):
    """keras.applications.convnext.LayerScale: ``x * gamma`` over the last (channel) axis."""

    def __init__(self, projection_dim: int, init_values: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((projection_dim,), float(init_values)))

    def forward(self, x, **kwargs):
        return x * self.gamma


class CustomScaleLayer(nn.Module):
    """keras.applications.inception_resnet_v2.CustomScaleLayer: ``inputs[0] + inputs[1] * scale``."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, xs, **kwargs):
        x, residual = xs
        return x + residual * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@builds("LayerScale")
def _layer_scale(layer, in_shapes, ctx):
    own = _own_args(layer, {"init_values", "projection_dim"})
    dim = own["projection_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise unsupported(layer, f"projection_dim is {dim!r}, not a positive integer")
    channels = in_shapes[0][-1] if in_shapes and in_shapes[0] else None
    if channels is not None and channels != dim:
        # Keras broadcasts gamma (projection_dim,) against the last axis: they must agree
        raise unsupported(layer, f"projection_dim {dim} does not match the input's {channels} channels")
    # channels-last: gamma scales the last axis, where the Dense layers before it leave channels
    return Built(LayerScale(dim, _number(layer, own["init_values"], "init_values")), "cl", "")


@builds("StochasticDepth")
def _stochastic_depth(layer, in_shapes, ctx):
    _number(layer, _own_args(layer, {"drop_path_rate"})["drop_path_rate"], "drop_path_rate")
    return Built(Identity(), "any", mask="pass")  # inference: every path is kept, unscaled


@builds("CustomScaleLayer", "Custom>CustomScaleLayer")
def _custom_scale(layer, in_shapes, ctx):
    scale = _number(layer, _own_args(layer, {"scale"})["scale"], "scale")
    if len(in_shapes) != 2:
        raise unsupported(layer, f"takes [x, residual], got {len(in_shapes)} inputs")
    return Built(CustomScaleLayer(scale), "any")
