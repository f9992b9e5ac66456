"""Convolutions: nn.ConvNd <-> ConvND / DepthwiseConvND, nn.ConvTransposeNd <-> ConvNDTranspose.

Keras kernels are channels-last whatever the data format:
ConvND ``(k..., in/groups, out)``, DepthwiseConvND ``(k..., in, depth_multiplier)``,
ConvNDTranspose ``(k..., out, in)``. torch: ConvNd ``(out, in/groups, k...)``,
ConvTransposeNd ``(in, out/groups, k...)``. Both are cross-correlations: no spatial flip.
"""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.activation import ChannelsFirstSoftmax, activation_module
from torchkeras_io._layers.base import Adapter, KerasLayer, lazy_param, owns_exactly
from torchkeras_io._layers.registry import Built, WeightSource, adapts, builds, cfg_int_tuple, exports, unsupported
from torchkeras_io.modules import Cropping, SamePad, SeparableConv, same_padding


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


@adapts
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
        if weights and is_depthwise(module):
            # a Keras Conv2D(groups=in_channels) (ConvNeXt) is this module too; its kernel
            # (k..., 1, out) holds the depthwise kernel (k..., in, multiplier) in the same order
            ks = tuple(module.weight.shape[2:])
            if weights[0].shape == ks + (1, module.out_channels):
                spec = self.export(module)[0].weights[0].shape
                weights = [weights[0].map(lambda a: a.reshape(spec), spec)] + list(weights[1:])
        if not weights or not info.is_keras1:  # later Keras versions all use the current layout
            return weights, extras
        spec = self.export(module)[0].weights[0].shape
        k = weights[0]
        rank = module.weight.dim() - 2
        if len(spec) == 3 and len(k.shape) == 4:
            # Keras 1 Convolution1D: (k, 1, in, out), or the Keras 1.1 layout (out, in, k, 1)
            if k.shape == (spec[0], 1, spec[1], spec[2]):
                k = k.map(lambda a: a[:, 0])
            elif k.shape == (spec[2], spec[1], spec[0], 1):
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


@adapts
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
            # Keras 1 Deconvolution2D: (kh, kw, in, out) with 'tf' ordering, (out, in, kh, kw) with
            # 'th'. A Keras 1 kernel is always in an old layout, so 'tf' is re-ordered even when
            # in == out makes its shape equal to the current one.
            spec = self.export(module)[0].weights[0].shape
            k = weights[0]
            for perm in ((0, 1, 3, 2), (2, 3, 0, 1)):
                if tuple(k.shape[p] for p in perm) == spec:
                    weights = [k.map(lambda a, perm=perm: a.permute(perm))] + list(weights[1:])
                    break
        return weights, extras

    def load(self, module, index, weights, extras):
        rank = module.weight.dim() - 2
        out = {"weight": weights[0].map(lambda k: k.permute(_to_torch_perm(rank)))}
        if module.bias is not None:
            out["bias"] = weights[1]
        return out


@adapts
class SeparableConvAdapter(Adapter):
    """modules.SeparableConv <-> SeparableConv1D/2D: depthwise_kernel, pointwise_kernel, bias."""

    family = "conv"
    claims_children = True

    def match(self, module):
        return isinstance(module, SeparableConv)

    def export(self, module, ctx=None):
        dw = ConvAdapter().export(module.depthwise)[0].weights[0]
        pw = module.pointwise
        rank = pw.weight.dim() - 2
        weights = [dw.renamed("depthwise_kernel"),
                   lazy_param(pw, "weight", "pointwise_kernel", lambda w: w.permute(_to_keras_perm(rank)))]  # fmt: skip
        if pw.bias is not None:
            weights.append(lazy_param(pw, "bias", "bias"))
        return [KerasLayer(f"SeparableConv{rank}D", weights)]

    def load(self, module, index, weights, extras):
        out = {"depthwise." + k: v for k, v in ConvAdapter().load(module.depthwise, 0, weights[:1], {}).items()}
        rank = module.pointwise.weight.dim() - 2
        out["pointwise.weight"] = weights[1].map(lambda k: k.permute(_to_torch_perm(rank)))
        if module.pointwise.bias is not None:
            out["pointwise.bias"] = weights[2]
        return out


# ------------------------------------------------------------------------------- config -> torch
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_PAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}


def _geometry(layer, in_shapes, rank_from_input=True):
    c = layer.config
    rank = len(in_shapes[0]) - 2
    channels_first = c.get("data_format") == "channels_first"
    cin = in_shapes[0][1] if channels_first else in_shapes[0][-1]
    if cin is None:
        raise unsupported(layer, f"the channel axis of its input is unknown: {in_shapes[0]}")
    spatial = in_shapes[0][2:] if channels_first else in_shapes[0][1:-1]
    k = cfg_int_tuple(c["kernel_size"], rank)
    s = cfg_int_tuple(c.get("strides", 1) or 1, rank)
    d = cfg_int_tuple(c.get("dilation_rate", 1) or 1, rank)
    return rank, int(cin), spatial, k, s, d, ("cl" if channels_first else "cf")


def _padded(layer, conv_cls_kwargs, rank, spatial, k, s, d):
    """(torch padding argument, module to run before the conv or None) for Keras padding modes."""
    mode = str(layer.config.get("padding", "valid")).lower()
    if mode == "valid":
        return 0, None
    if mode == "causal":
        return 0, _PAD[rank]((d[0] * (k[0] - 1), 0), 0.0)
    if mode == "full":  # Keras 1
        return tuple(di * (ki - 1) for ki, di in zip(k, d)), None
    if mode != "same":
        raise unsupported(layer, f"padding '{mode}'")
    if all(si == 1 for si in s):
        return "same", None  # torch's 'same' puts the odd pixel at the end, like TensorFlow
    if any(x is None for x in spatial):
        return 0, SamePad(k, s, d)
    pairs = [same_padding(int(n), ki, si, di) for n, ki, si, di in zip(spatial, k, s, d)]
    if all(a == b for a, b in pairs):
        return tuple(a for a, _ in pairs), None
    flat = [p for pair in reversed(pairs) for p in pair]
    return 0, _PAD[rank](tuple(flat), 0.0)


def _assemble(layer, ctx, pre, conv, layout):
    parts = ([pre] if pre is not None else []) + [conv]
    act, act_layout = activation_module(layer.config.get("activation", "linear"), ctx.generation)
    if not isinstance(act, nn.Identity):
        parts.append(ChannelsFirstSoftmax(act) if act_layout == "cl" and layout == "cf" else act)
    if len(parts) == 1:
        return Built(conv, layout, "")
    return Built(nn.Sequential(*parts), layout, str(parts.index(conv)))


@builds("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D")
def _conv(layer, in_shapes, ctx):
    c = layer.config
    rank, cin, spatial, k, s, d, layout = _geometry(layer, in_shapes)
    padding, pre = _padded(layer, {}, rank, spatial, k, s, d)
    if layer.class_name.startswith("Depthwise"):  # one group per input channel, depth_multiplier outputs each
        groups, filters = cin, cin * int(c.get("depth_multiplier", 1) or 1)
    else:
        groups, filters = int(c.get("groups", 1) or 1), int(c["filters"])
    conv = _CONV[rank](cin, filters, k, stride=s, padding=padding, dilation=d, groups=groups,
                       bias=bool(c.get("use_bias", True)))  # fmt: skip
    return _assemble(layer, ctx, pre, conv, layout)


@builds("SeparableConv1D", "SeparableConv2D")
def _separable(layer, in_shapes, ctx):
    c = layer.config
    rank, cin, spatial, k, s, d, layout = _geometry(layer, in_shapes)
    padding, pre = _padded(layer, {}, rank, spatial, k, s, d)
    conv = SeparableConv(rank, cin, int(c["filters"]), k, s, d, int(c.get("depth_multiplier", 1) or 1),
                         bool(c.get("use_bias", True)), padding)  # fmt: skip
    return _assemble(layer, ctx, pre, conv, layout)


@builds("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
def _conv_transpose(layer, in_shapes, ctx):
    c = layer.config
    rank, cin, spatial, k, s, d, layout = _geometry(layer, in_shapes)
    mode = str(c.get("padding", "valid")).lower()
    given = c.get("output_padding")
    given = cfg_int_tuple(given, rank) if given is not None else None
    out_pad, crops = [], []
    for i in range(rank):
        eff = (k[i] - 1) * d[i] + 1
        # Keras's output length relative to torch's full (unpadded) length (L-1)*s + eff
        if given is None:
            extra = {"valid": max(s[i] - eff, 0), "same": s[i] - eff}.get(mode)
            if extra is None:
                raise unsupported(layer, f"padding '{mode}'")
            begin = 0 if mode == "valid" else max(eff - s[i], 0) // 2
        else:  # TensorFlow derives the padding from the requested output length
            pad = {"same": eff // 2, "valid": 0}.get(mode)
            if pad is None:
                raise unsupported(layer, f"padding '{mode}'")
            extra = given[i] - 2 * pad
            begin = 0 if mode == "valid" else max(2 * pad - given[i], 0) // 2
        grow = max(0, extra + begin)  # torch's output_padding adds at the end
        out_pad.append(grow)
        crops.append((begin, grow - extra - begin))
    if any(op >= max(si, di) for op, si, di in zip(out_pad, s, d)):
        raise unsupported(layer, "output_padding must be smaller than the stride or the dilation")
    conv = _CONV_T[rank](cin, int(c["filters"]), k, stride=s, dilation=d, output_padding=tuple(out_pad),
                         bias=bool(c.get("use_bias", True)))  # fmt: skip
    parts = [conv] + ([Cropping(crops)] if any(a or b for a, b in crops) else [])
    act, act_layout = activation_module(c.get("activation", "linear"), ctx.generation)
    if not isinstance(act, nn.Identity):
        parts.append(ChannelsFirstSoftmax(act) if act_layout == "cl" and layout == "cf" else act)
    if len(parts) == 1:
        return Built(conv, layout, "")
    return Built(nn.Sequential(*parts), layout, "0")


# ------------------------------------------------------------------------------- torch -> config
def _tf_same_matches(sizes, k, s, d, p) -> bool:
    """Whether torch's symmetric padding p gives exactly TensorFlow's 'same' windows."""
    for n, ki, si, di, pi in zip(sizes, k, s, d, p):
        eff = (ki - 1) * di + 1
        if (n + 2 * pi - eff) // si + 1 != -(-n // si) or same_padding(n, ki, si, di)[0] != pi:
            return False
    return True


def _export_padding(ctx, x, module, rank, name):
    """(Keras tensor, Keras padding string) for a torch conv's padding."""
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise ctx.fail(f"padding_mode='{module.padding_mode}' has no Keras equivalent")
    if module.padding == "same":
        return x, "same"
    if module.padding == "valid" or not any(module.padding):
        return x, "valid"
    sizes = [x.shape[2 + i] for i in range(rank)]
    if _tf_same_matches(sizes, module.kernel_size, module.stride, module.dilation, module.padding):
        return x, "same"
    pads = [[p, p] for p in module.padding]
    shape = tuple(x.shape[:2]) + tuple(n + 2 * p for n, p in zip(sizes, module.padding))
    padded = ctx.add1(f"ZeroPadding{rank}D", {"padding": pads if rank > 1 else pads[0]}, x, shape, x.perm,
                      name=f"{name}_pad")  # fmt: skip
    return padded, "valid"


@exports(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _export_conv(ctx, node, module, args, kwargs, value):
    rank = module.weight.dim() - 2
    name = ctx.layer_name(node)
    if any(d > 1 for d in module.dilation) and any(st > 1 for st in module.stride):
        raise ctx.fail("Keras convolutions take strides > 1 or dilation > 1, not both")
    x = ctx.as_channels_last(args[0])
    x, padding = _export_padding(ctx, x, module, rank, name)
    cfg = {"kernel_size": list(module.kernel_size), "strides": list(module.stride), "padding": padding,
           "data_format": "channels_last", "dilation_rate": list(module.dilation), "activation": "linear",
           "use_bias": module.bias is not None}  # fmt: skip
    if is_depthwise(module):
        if rank == 2 and module.stride[0] != module.stride[1]:
            raise ctx.fail("TensorFlow's depthwise convolution needs equal strides")
        cls = f"DepthwiseConv{rank}D"
        cfg["depth_multiplier"] = module.out_channels // module.in_channels
    else:
        cls = f"Conv{rank}D"
        cfg.update(filters=module.out_channels, groups=module.groups)
    source = WeightSource("", module, ConvAdapter(), 0, None)
    return ctx.add1(cls, cfg, x, tuple(value.shape), x.perm, name=name, module=module, weights=source)


@exports(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _export_conv_transpose(ctx, node, module, args, kwargs, value):
    rank = module.weight.dim() - 2
    name = ctx.layer_name(node)
    if module.groups != 1:
        raise ctx.fail("grouped transposed convolutions have no Keras layer")
    if any(d > 1 for d in module.dilation) and any(s > 1 for s in module.stride):
        raise ctx.fail("transposed convolutions with both dilation and stride")
    x = ctx.as_channels_last(args[0])
    full = tuple(value.shape[:2]) + tuple(n + 2 * p for n, p in zip(value.shape[2:], module.padding))
    cfg = {"filters": module.out_channels, "kernel_size": list(module.kernel_size), "strides": list(module.stride),
           "padding": "valid", "output_padding": list(module.output_padding), "data_format": "channels_last",
           "dilation_rate": list(module.dilation), "activation": "linear", "use_bias": module.bias is not None}  # fmt: skip
    source = WeightSource("", module, ConvTransposeAdapter(), 0, None)
    y = ctx.add1(f"Conv{rank}DTranspose", cfg, x, full, x.perm, name=name, module=module, weights=source)
    if not any(module.padding):
        return y
    crop = [[p, p] for p in module.padding]
    return ctx.add1(f"Cropping{rank}D", {"cropping": crop if rank > 1 else crop[0]}, y, tuple(value.shape), y.perm,
                    name=f"{name}_crop")  # fmt: skip
