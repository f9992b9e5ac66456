"""Attention: nn.MultiheadAttention / EinsumMultiHeadAttention <-> MultiHeadAttention, and the
config builders of MultiHeadAttention, Attention and AdditiveAttention.

Keras keeps four EinsumDense sub-layers (query, key, value, attention_output) with kernels
``(E_in, H, d)`` and ``(H, d, E)`` and biases ``(H, d)`` / ``(E,)``. torch packs q, k, v into
``in_proj_weight (3E, E)`` (or separate ``q/k/v_proj_weight`` when kdim/vdim differ) with heads
as contiguous row blocks, and keeps the output projection in the ``out_proj`` Linear child.
Layers nn.MultiheadAttention cannot compute (``key_dim`` or ``value_dim`` other than E/H, an
``output_shape``, no biases, a gate, attention over other axes) are built as
:class:`~torchkeras_io.modules.EinsumMultiHeadAttention`, whose projections keep Keras's shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from torchkeras_io._layers import tensor_ops  # noqa: F401  (builders of the ops exported attention uses: matmul, gather, ...)
from torchkeras_io._layers.base import Adapter, KerasLayer, combine, direct_tensors, lazy_param
from torchkeras_io._layers.dense import DenseAdapter
from torchkeras_io._layers.registry import Built, WeightSource, adapts, builds, exports, unsupported
from torchkeras_io._layers.trace import keras_layer, matmul, roll, tensor_weight, tf_op
from torchkeras_io._tensors import Lazy
from torchkeras_io.modules import DotAttention, EinsumMultiHeadAttention, MultiHeadAttention


@adapts
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


@adapts
class EinsumMultiHeadAttentionAdapter(Adapter):
    """EinsumMultiHeadAttention <-> MultiHeadAttention: the projections hold Keras's own shapes."""

    family = "attention"
    claims_children = True

    def match(self, module):
        return isinstance(module, EinsumMultiHeadAttention)

    @staticmethod
    def _parts(module):
        return ["query", "key"] + (["gate"] if module.gate is not None else []) + ["value", "attention_output"]

    def export(self, module, ctx=None):
        weights = []
        for name in self._parts(module):
            proj = getattr(module, name)
            weights.append(lazy_param(proj, "kernel", f"{name}/kernel"))
            if proj.bias is not None:
                weights.append(lazy_param(proj, "bias", f"{name}/bias"))
        return [KerasLayer("MultiHeadAttention", weights)]

    def load(self, module, index, weights, extras):
        names = []
        for name in self._parts(module):
            names.append(f"{name}.kernel")
            if getattr(module, name).bias is not None:
                names.append(f"{name}.bias")
        return dict(zip(names, weights))


# ------------------------------------------------------------------------------- config -> torch
def _last_dim(layer, shape, what: str) -> int:
    if not shape or shape[-1] is None:
        raise unsupported(layer, f"the {what}'s last axis is unknown: {shape}")
    return int(shape[-1])


def _mha_shapes(layer, in_shapes) -> tuple:
    """Shapes of query, value and key: positional inputs (Keras 3), else the config (tf.keras)."""
    c = layer.config
    query = in_shapes[0] if in_shapes else c.get("query_shape")
    value = in_shapes[1] if len(in_shapes) > 1 else c.get("value_shape")
    key = in_shapes[2] if len(in_shapes) > 2 else (c.get("key_shape") if len(in_shapes) < 2 else None)
    if query is None or value is None:
        raise unsupported(layer, "the shapes of query and value are unknown (value passed by keyword, and the "
                                 "config has no value_shape)")  # fmt: skip
    return tuple(query), tuple(value), tuple(key) if key is not None else tuple(value)


def _attention_axes(layer, value, query_rank: int, generation: int):
    """The attended axes of the projected tensors, None for Keras's default (every inner axis)."""
    if value is None:
        return None
    axes = [value] if isinstance(value, int) else list(value)
    proj_rank = query_rank + 1
    # Keras 3 counts negative axes from the last non-feature axis; tf.keras (numpy) from the end
    out = tuple(sorted({int(a) if a >= 0 else (proj_rank - 1 if generation >= 3 else proj_rank) + int(a)
                        for a in axes}))  # fmt: skip
    if not out or not all(1 <= a <= query_rank - 2 for a in out):
        raise unsupported(layer, f"attention_axes {value} for rank-{query_rank} inputs")
    return None if out == tuple(range(1, query_rank - 1)) else out


@builds("MultiHeadAttention")
def _multi_head_attention(layer, in_shapes, ctx):
    c = layer.config
    heads, key_dim = int(c["num_heads"]), int(c["key_dim"])
    value_dim = int(c.get("value_dim") or key_dim)
    query, value, key = _mha_shapes(layer, in_shapes)
    e = _last_dim(layer, query, "query")
    ev, ek = _last_dim(layer, value, "value"), _last_dim(layer, key, "key")
    out_shape = c.get("output_shape")
    out_shape = (e,) if not out_shape else ((int(out_shape),) if isinstance(out_shape, int) else tuple(out_shape))
    use_bias, use_gate = bool(c.get("use_bias", True)), bool(c.get("use_gate", False))
    axes = _attention_axes(layer, c.get("attention_axes"), len(query), ctx.generation)
    window = c.get("sliding_window")
    window = None if window is None else int(window)
    dropout = float(c.get("dropout") or 0.0)
    if ctx.generation >= 3:
        mode, zero = "add", True
    else:
        mode, zero = ("replace" if c.get("softmax_robust_masking") else "add"), False
    exact_torch = (key_dim == value_dim and key_dim * heads == e and out_shape == (e,) and use_bias and not use_gate
                   and axes is None and len(query) == 3 and len(value) == 3 and len(key) == 3 and mode == "add")  # fmt: skip
    if exact_torch:
        module = MultiHeadAttention(e, heads, kdim=ek, vdim=ev, sliding_window=window, zero_if_explicit=zero,
                                    dropout=dropout)  # fmt: skip
        return Built(module, "cl", "attention", mask="consume")
    module = EinsumMultiHeadAttention(e, ek, ev, heads, key_dim, value_dim, out_shape, use_bias=use_bias,
                                      use_gate=use_gate, attention_axes=axes, sliding_window=window, mask_mode=mode,
                                      zero_if_explicit=zero, dropout=dropout)  # fmt: skip
    return Built(module, "cl", "", mask="consume")


@builds("Attention")
def _attention(layer, in_shapes, ctx):
    c = layer.config
    mode = c.get("score_mode", "dot")
    if mode not in ("dot", "concat"):
        raise unsupported(layer, f"score_mode {mode!r}")
    use_scale = bool(c.get("use_scale", False))
    module = DotAttention(mode, use_scale, causal=bool(c.get("causal", False)), dropout=float(c.get("dropout") or 0.0))
    return Built(module, "cl", "" if use_scale or mode == "concat" else None, mask="consume")


@builds("AdditiveAttention")
def _additive_attention(layer, in_shapes, ctx):
    c = layer.config
    use_scale = bool(c.get("use_scale", True))
    dim = _last_dim(layer, in_shapes[0] if in_shapes else None, "query") if use_scale else None
    module = DotAttention("additive", use_scale, dim=dim, causal=bool(c.get("causal", False)),
                          dropout=float(c.get("dropout") or 0.0))  # fmt: skip
    return Built(module, "cl", "" if use_scale else None, mask="consume")


# ------------------------------------------------------------------------------- torch -> config
@exports(nn.MultiheadAttention)
def _export_mha(ctx, node, module, args, kwargs, value):
    if not MultiheadAttentionAdapter().match(module):
        raise ctx.fail("add_bias_kv, or biases on only some projections, have no Keras equivalent")
    if module.add_zero_attn:
        raise ctx.fail("add_zero_attn has no Keras equivalent")
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")  # fmt: skip
    call = dict(zip(names, args))
    call.update(kwargs)
    if call.get("key_padding_mask") is not None or call.get("attn_mask") is not None or call.get("is_causal"):
        raise ctx.fail("attention masks passed to MultiheadAttention")
    seq = (0, 1, 2) if module.batch_first else (1, 0, 2)  # Keras takes (batch, time, features)
    if any(call[n].rank != 3 for n in ("query", "key", "value")):
        raise ctx.fail("unbatched (time, features) inputs to MultiheadAttention")
    q, k, v = (ctx.permute(call[n], seq) for n in ("query", "key", "value"))
    out = value[0]
    cfg = {"num_heads": module.num_heads, "key_dim": module.head_dim, "value_dim": module.head_dim,
           "use_bias": module.in_proj_bias is not None, "dropout": 0.0, "output_shape": None, "attention_axes": [1],
           # tf-keras builds the layer from these (Keras 3 cannot read tf-keras attention configs at all)
           "query_shape": [None, *q.keras_shape[1:]], "key_shape": [None, *k.keras_shape[1:]],
           "value_shape": [None, *v.keras_shape[1:]]}  # fmt: skip
    source = WeightSource("", module, MultiheadAttentionAdapter(), 0, None)
    call_kwargs = {"value": v} if k is v else {"value": v, "key": k}
    y = ctx.add("MultiHeadAttention", cfg, q, [(tuple(out.shape), q.perm, q.dtype)], name=ctx.layer_name(node),
                kwargs=call_kwargs, module=module, weights=source)[0]  # fmt: skip
    return (y, None)


# ---------------------------------------------------------------- torchvision Swin window attention
def _is_swin_attention(module) -> bool:
    cls = type(module)
    return cls.__name__ == "ShiftedWindowAttention" and cls.__module__.startswith("torchvision.")


@adapts
class SwinAttentionAdapter(Adapter):
    """torchvision's ``ShiftedWindowAttention`` (v1): its relative position bias table is the
    ``beta`` of the ``LayerNormalization`` that produces it in an exported model (see
    :mod:`torchkeras_io._layers.trace`); the index buffer, fixed by the window size, is a torch
    extra. ``qkv`` and ``proj`` are Dense layers of their own."""

    family = "attention"

    def match(self, module):
        return _is_swin_attention(module) and set(direct_tensors(module)) == {
            "relative_position_bias_table", "relative_position_index"}  # fmt: skip

    def export(self, module, ctx=None):
        return [KerasLayer("LayerNormalization", [lazy_param(module, "relative_position_bias_table", "beta")],
                           extras=[lazy_param(module, "relative_position_index", "relative_position_index")])]  # fmt: skip

    def load(self, module, index, weights, extras):
        out = {"relative_position_bias_table": weights[0]}
        if "relative_position_index" in extras:
            out["relative_position_index"] = extras["relative_position_index"]
        return out


def _swin_mask(pad_h: int, pad_w: int, window: tuple, shift: tuple) -> torch.Tensor:
    """The additive mask of shifted windows, ``(windows, 1, N, N)``, computed as torchvision does."""
    mask = torch.zeros((pad_h, pad_w))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1]).permute(0, 2, 1, 3)
    mask = mask.reshape(-1, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1)


@exports("torchvision.models.swin_transformer.ShiftedWindowAttention")
def export_swin_attention(ctx, node, module, args, kwargs, value):
    """torchvision ``shifted_window_attention`` in Keras layers, the batch kept apart from the windows:
    windows ``(B, windows, N, C)``; heads ``(B, windows, heads, N, d)``; the bias table gathered by
    the constant index (``tf.gather`` / ``keras.ops.take``); the shift mask added as a constant."""
    if not SwinAttentionAdapter().match(module) or getattr(module, "logit_scale", None) is not None:
        raise ctx.fail("only torchvision's ShiftedWindowAttention (v1) is exported")
    x = ctx.as_torch(args[0])
    if x.rank != 4:
        raise ctx.fail("window attention on a tensor that is not (N, H, W, C)")
    b, H, W, C = x.shape
    wh, ww = module.window_size
    heads = module.num_heads
    d = C // heads
    pad_r, pad_b = (ww - W % ww) % ww, (wh - H % wh) % wh
    ph, pw = H + pad_b, W + pad_r
    shift = list(module.shift_size)
    shift[0] = 0 if wh >= ph else shift[0]
    shift[1] = 0 if ww >= pw else shift[1]
    nh, nw = ph // wh, pw // ww
    nwin, n = nh * nw, wh * ww
    name = ctx.layer_name(node)

    def layer(cls, cfg, t, shape, suffix, **kw):
        return keras_layer(ctx, cls, cfg, t, (b, *shape), f"{name}_{suffix}", **kw)

    def dense(t, linear, shape, suffix):
        cfg = {"units": linear.out_features, "activation": "linear", "use_bias": linear.bias is not None}
        source = WeightSource("", linear, DenseAdapter(), 0, None)
        return layer("Dense", cfg, t, shape, suffix, module=linear, weights=source)

    if pad_r or pad_b:
        x = layer("ZeroPadding2D", {"padding": [[0, pad_b], [0, pad_r]], "data_format": "channels_last"}, x,
                  (ph, pw, C), "pad")  # fmt: skip
    if sum(shift) > 0:
        x = roll(ctx, x, [-shift[0], -shift[1]], [1, 2], (b, ph, pw, C), f"{name}_shift")
    x = layer("Reshape", {"target_shape": [nh, wh, nw, ww, C]}, x, (nh, wh, nw, ww, C), "grid")
    x = layer("Permute", {"dims": [1, 3, 2, 4, 5]}, x, (nh, nw, wh, ww, C), "grid_order")
    x = layer("Reshape", {"target_shape": [nwin, n, C]}, x, (nwin, n, C), "windows")
    qkv = dense(x, module.qkv, (nwin, n, 3 * C), "qkv")
    qkv = layer("Reshape", {"target_shape": [nwin, n, 3, C]}, qkv, (nwin, n, 3, C), "qkv_split")
    parts = []
    for i, part in enumerate("qkv"):
        t = layer("Cropping3D", {"cropping": [[0, 0], [0, 0], [i, 2 - i]], "data_format": "channels_last"}, qkv,
                  (nwin, n, 1, C), f"{part}_pick")  # fmt: skip
        t = layer("Reshape", {"target_shape": [nwin, n, heads, d]}, t, (nwin, n, heads, d), f"{part}_heads")
        parts.append(layer("Permute", {"dims": [1, 3, 2, 4]}, t, (nwin, heads, n, d), part))
    q, k, v = parts
    q = layer("Rescaling", {"scale": float(d**-0.5), "offset": 0.0}, q, (nwin, heads, n, d), "q_scaled")
    kt = layer("Permute", {"dims": [1, 2, 4, 3]}, k, (nwin, heads, d, n), "k_t")
    attn = matmul(ctx, q, kt, (b, nwin, heads, n, n), f"{name}_scores")
    table = tensor_weight(ctx, module, "relative_position_bias_table", name, SwinAttentionAdapter())
    bias = tf_op(ctx, "gather", table, {"indices": module.relative_position_index.tolist(), "axis": 1},
                     (b, n * n, heads), table.perm, table.dtype, f"{name}_bias_gather")  # fmt: skip
    bias = layer("Reshape", {"target_shape": [n, n, heads]}, bias, (n, n, heads), "bias_grid")
    bias = layer("Permute", {"dims": [3, 1, 2]}, bias, (heads, n, n), "bias_heads")
    bias = layer("Reshape", {"target_shape": [1, heads, n, n]}, bias, (1, heads, n, n), "bias")
    attn = ctx.add("Add", {}, [attn, bias], [((b, nwin, heads, n, n), attn.perm, attn.dtype)],
                   name=f"{name}_biased")[0]  # fmt: skip
    if sum(shift) > 0:
        mask = _swin_mask(ph, pw, (wh, ww), tuple(shift))
        attn = tf_op(ctx, "math.add", attn, {"y": mask.tolist()}, attn.shape, attn.perm, attn.dtype,
                         f"{name}_masked")  # fmt: skip
    attn = layer("Softmax", {"axis": -1}, attn, (nwin, heads, n, n), "softmax")
    o = matmul(ctx, attn, v, (b, nwin, heads, n, d), f"{name}_mix")
    o = layer("Permute", {"dims": [1, 3, 2, 4]}, o, (nwin, n, heads, d), "merge_order")
    o = layer("Reshape", {"target_shape": [nwin, n, C]}, o, (nwin, n, C), "merge")
    o = dense(o, module.proj, (nwin, n, C), "proj")
    o = layer("Reshape", {"target_shape": [nh, nw, wh, ww, C]}, o, (nh, nw, wh, ww, C), "ungrid")
    o = layer("Permute", {"dims": [1, 3, 2, 4, 5]}, o, (nh, wh, nw, ww, C), "ungrid_order")
    o = layer("Reshape", {"target_shape": [ph, pw, C]}, o, (ph, pw, C), "image")
    if sum(shift) > 0:
        o = roll(ctx, o, [shift[0], shift[1]], [1, 2], (b, ph, pw, C), f"{name}_unshift")
    if pad_r or pad_b:
        o = layer("Cropping2D", {"cropping": [[0, pad_b], [0, pad_r]], "data_format": "channels_last"}, o,
                  (H, W, C), "crop")  # fmt: skip
    return o
