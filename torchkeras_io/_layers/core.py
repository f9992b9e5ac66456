"""Keras core layers without weights: Dropout and noise, Flatten, Reshape, Permute, RepeatVector, …"""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.registry import Built, builds, exports
from torchkeras_io.modules import Flatten, Identity, Masking, Permute, RepeatVector, Rescaling, Reshape


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
        # Keras 2+ flattens channels-first tensors in channels-last order: (N, C, ...) -> (N, ..., C) first
        return Built(_FlattenChannelsLast(), "cl")
    return Built(Flatten(), "cl")


class _FlattenChannelsLast(Flatten):
    """Flatten of a channels-first Keras tensor, in the order of its channels-last transpose."""

    def forward(self, x, **kwargs):
        return super().forward(x.movedim(1, -1))


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
    if isinstance(scale, list) or isinstance(offset, list):  # per channel: broadcast in Keras's layout
        return Built(Rescaling(scale, offset), "cl")
    return Built(Rescaling(float(scale), float(offset)), "any")


@builds("InputLayer")
def _input_inside(layer, in_shapes, ctx):  # an InputLayer called like a layer (nested Sequential)
    return Built(Identity(), "any")


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.Dropout, nn.AlphaDropout)
def _export_dropout(ctx, node, module, args, kwargs, value):
    cls = "AlphaDropout" if isinstance(module, nn.AlphaDropout) else "Dropout"
    return ctx.add1(
        cls, {"rate": float(module.p)}, args[0], tuple(value.shape), args[0].perm, name=ctx.layer_name(node)
    )


@exports(nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
def _export_spatial_dropout(ctx, node, module, args, kwargs, value):
    x = ctx.as_channels_last(args[0])
    return ctx.add1(f"SpatialDropout{x.rank - 2}D", {"rate": float(module.p)}, x, tuple(value.shape), x.perm,
                    name=ctx.layer_name(node))  # fmt: skip


@exports(nn.Identity)
def _export_identity(ctx, node, module, args, kwargs, value):
    return args[0]


@exports(nn.Flatten, nn.Unflatten)
def _export_flatten(ctx, node, module, args, kwargs, value):
    x = ctx.as_torch(args[0])  # Keras reshapes in its own axis order: use torch's
    if tuple(value.shape)[0] != x.shape[0]:
        raise ctx.fail("flattening the batch axis")
    if value.dim() == 2:
        return ctx.add1("Flatten", {}, x, tuple(value.shape), (0, 1), name=ctx.layer_name(node))
    return ctx.add1("Reshape", {"target_shape": list(value.shape[1:])}, x, tuple(value.shape),
                    tuple(range(value.dim())), name=ctx.layer_name(node))  # fmt: skip
