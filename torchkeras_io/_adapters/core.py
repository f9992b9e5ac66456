"""Keras core layers without weights: Dropout and noise, Flatten, Reshape, Permute, RepeatVector, …"""

from __future__ import annotations

from torch import nn

from ..modules import Flatten, Identity, Masking, Permute, RepeatVector, Rescaling, Reshape
from .registry import Built, builds, unsupported


@builds("Dropout")
def _dropout(layer, in_shapes, ctx):
    return Built(nn.Dropout(float(layer.config.get("rate", 0.5))), "any", mask="pass")


@builds("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
def _spatial_dropout(layer, in_shapes, ctx):
    rank = len(in_shapes[0]) - 2
    cls = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}[rank]
    layout = "cl" if layer.config.get("data_format") == "channels_first" else "cf"
    return Built(cls(float(layer.config.get("rate", 0.5))), layout)


@builds("GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomCrop",
        "RandomBrightness", "RandomHeight", "RandomWidth")  # fmt: skip
def _identity_at_inference(layer, in_shapes, ctx):
    # Training-time noise and augmentation: identity in inference, as Keras computes it
    return Built(Identity(), "any", mask="pass")


@builds("Masking")
def _masking(layer, in_shapes, ctx):
    return Built(Masking(float(layer.config.get("mask_value", 0.0))), "cl", mask="compute")


@builds("Flatten")
def _flatten(layer, in_shapes, ctx):
    if layer.config.get("data_format") == "channels_first" and len(in_shapes[0]) >= 3 and ctx.generation >= 2:
        # Keras 2+ flattens channels-first tensors in channels-last order
        return Built(Flatten(), "cf", out_layout="cl")
    return Built(Flatten(), "cl")


@builds("Reshape")
def _reshape(layer, in_shapes, ctx):
    return Built(Reshape(layer.config["target_shape"]), "cl")


@builds("Permute")
def _permute(layer, in_shapes, ctx):
    return Built(Permute(layer.config["dims"]), "cl")


@builds("RepeatVector")
def _repeat(layer, in_shapes, ctx):
    return Built(RepeatVector(int(layer.config["n"])), "cl")


@builds("Rescaling")
def _rescaling(layer, in_shapes, ctx):
    scale, offset = layer.config.get("scale", 1.0), layer.config.get("offset", 0.0)
    if isinstance(scale, list) or isinstance(offset, list):
        raise unsupported(layer, "per-channel scale/offset")
    return Built(Rescaling(float(scale), float(offset)), "any")


@builds("InputLayer")
def _input_inside(layer, in_shapes, ctx):  # an InputLayer called like a layer (nested Sequential)
    return Built(Identity(), "any")
