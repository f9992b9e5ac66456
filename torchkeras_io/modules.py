"""Small torch modules for Keras semantics that torch.nn lacks.

Models built from Keras configs are made of ordinary torch.nn modules wherever one computes
exactly what the Keras layer computes (``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``, …). The
modules here fill the gaps: TensorFlow's asymmetric 'same' padding, Keras's version-dependent
``hard_sigmoid``, reshapes that keep the batch axis, merge layers, and so on. Each is plain,
scriptable-friendly torch code with no Keras dependency.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Activation", "Embedding", "HardSigmoidTF", "Masking", "KerasReLU", "ThresholdedReLU", "SamePad", "Reshape", "Permute",
    "RepeatVector", "Merge", "Cropping", "Flatten", "Rescaling", "Normalization", "GlobalPool", "Identity", "SeparableConv",
    "EinsumProjection", "EinsumMultiHeadAttention", "MultiHeadAttention", "DotAttention",
]  # fmt: skip


class Embedding(nn.Embedding):
    """nn.Embedding that takes ids of any numeric dtype, as Keras does (it casts to int).

    With ``mask_zero`` it also gives Keras's mask (id != 0) to the layers after it.
    """

    def __init__(self, *args, mask_zero: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_zero = mask_zero

    def forward(self, x, **kwargs):
        return super().forward(x.long())

    def compute_mask(self, x, mask=None):
        return (x != 0) if self.mask_zero else None


class Masking(nn.Module):
    """Keras ``Masking``: time steps whose features all equal ``mask_value`` are zeroed and masked."""

    def __init__(self, mask_value: float = 0.0):
        super().__init__()
        self.mask_value = float(mask_value)

    def compute_mask(self, x, mask=None):
        return (x != self.mask_value).any(dim=-1)

    def forward(self, x, **kwargs):
        return x * self.compute_mask(x).unsqueeze(-1).to(x.dtype)


class Identity(nn.Identity):
    """Identity that also accepts (and ignores) Keras call keyword arguments."""

    def forward(self, x, **kwargs):
        return x


class HardSigmoidTF(nn.Module):
    """Keras 2 / tf.keras ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (Keras 3 uses relu6(x+3)/6)."""

    def forward(self, x):
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


class KerasReLU(nn.Module):
    """Keras ``ReLU(max_value, negative_slope, threshold)``."""

    def __init__(self, max_value: Optional[float] = None, negative_slope: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, float(negative_slope), float(threshold)

    def forward(self, x):
        if self.threshold != 0.0:
            neg = self.negative_slope * (x - self.threshold)
            y = torch.where(x >= self.threshold, x, neg if self.negative_slope else torch.zeros_like(x))
        else:
            y = F.leaky_relu(x, self.negative_slope) if self.negative_slope else F.relu(x)
        if self.max_value is not None:
            y = torch.clamp(y, max=float(self.max_value))
        return y

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


class ThresholdedReLU(nn.Module):
    def __init__(self, theta: float = 1.0):
        super().__init__()
        self.theta = float(theta)

    def forward(self, x):
        return torch.where(x > self.theta, x, torch.zeros_like(x))


class Activation(nn.Module):
    """An element-wise function, or softmax / log-softmax over ``dim``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(x)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding of one axis: the extra pixel goes to the end."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + eff - size)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """TensorFlow 'same' padding for channels-first input whose spatial size is known only at run time."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = tuple(kernel), tuple(stride), tuple(dilation), value

    def forward(self, x):
        pads = []
        for i in reversed(range(len(self.kernel))):
            pads += same_padding(x.shape[2 + i], self.kernel[i], self.stride[i], self.dilation[i])
        return F.pad(x, pads, value=self.value) if any(pads) else x


class Reshape(nn.Module):
    """Keras ``Reshape``: the per-sample shape (one -1 allowed), the batch axis kept."""

    def __init__(self, target_shape: Sequence[int]):
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)

    def forward(self, x, **kwargs):
        return x.reshape((x.shape[0],) + self.target_shape)


class Flatten(nn.Module):
    def forward(self, x, **kwargs):
        return x.reshape(x.shape[0], -1)


class Permute(nn.Module):
    """Keras ``Permute(dims)``: 1-based axes, batch axis fixed."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x, **kwargs):
        return x.permute((0,) + self.dims)


class RepeatVector(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = int(n)

    def forward(self, x, **kwargs):
        return x.unsqueeze(1).expand(x.shape[0], self.n, x.shape[1])


class Merge(nn.Module):
    """Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate and Dot over a list."""

    def __init__(self, mode: str, axis: int = -1, axes=None, normalize: bool = False):
        super().__init__()
        self.mode, self.axis, self.axes, self.normalize = mode, int(axis), axes, bool(normalize)

    def forward(self, xs, **kwargs):
        xs = list(xs)
        if self.mode == "concat":
            return torch.cat(xs, dim=self.axis)
        if self.mode == "dot":
            return self._dot(*xs)
        out = xs[0]
        for x in xs[1:]:
            if self.mode in ("add", "average"):
                out = out + x
            elif self.mode == "subtract":
                out = out - x
            elif self.mode == "multiply":
                out = out * x
            elif self.mode == "maximum":
                out = torch.maximum(out, x)
            elif self.mode == "minimum":
                out = torch.minimum(out, x)
        return out / len(xs) if self.mode == "average" else out

    def _dot(self, a, b):
        axes = self.axes if isinstance(self.axes, (list, tuple)) else [self.axes, self.axes]
        ax = [(int(x) % t.dim()) for x, t in zip(axes, (a, b))]
        if self.normalize:
            a, b = F.normalize(a, dim=ax[0]), F.normalize(b, dim=ax[1])
        # Keras batch_dot: a's other axes, then b's other axes, in order; at least (batch, 1)
        a = torch.movedim(a, ax[0], -1)
        b = torch.movedim(b, ax[1], 1)
        n, k = a.shape[0], a.shape[-1]
        out = torch.bmm(a.reshape(n, -1, k), b.reshape(n, k, -1)).reshape((n,) + a.shape[1:-1] + b.shape[2:])
        return out if out.dim() > 1 else out.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, axis={self.axis}" if self.mode == "concat" else f"mode={self.mode!r}"


class Cropping(nn.Module):
    """Keras ``CroppingND`` on channels-first input: ((begin, end), …) per spatial axis."""

    def __init__(self, cropping: Sequence[Sequence[int]]):
        super().__init__()
        self.cropping = tuple((int(a), int(b)) for a, b in cropping)

    def forward(self, x, **kwargs):
        idx = [slice(None), slice(None)] + [slice(a, x.shape[2 + i] - b) for i, (a, b) in enumerate(self.cropping)]
        return x[tuple(idx)]


class GlobalPool(nn.Module):
    """Global average / max pooling of channels-first input over its spatial axes."""

    def __init__(self, mode: str, keepdims: bool = False):
        super().__init__()
        self.mode, self.keepdims = mode, bool(keepdims)

    def forward(self, x, **kwargs):
        dims = tuple(range(2, x.dim()))
        if self.mode == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        return x.amax(dim=dims, keepdim=self.keepdims)


class Rescaling(nn.Module):
    """Keras ``Rescaling``: ``x * scale + offset``. Array ``scale`` / ``offset`` (per channel, as
    Keras 3 allows) broadcast against the input in Keras's layout and are kept as non-persistent
    buffers (config constants: they follow ``.to()`` / ``.double()``, the file holds no weights)."""

    def __init__(self, scale, offset):
        super().__init__()
        if isinstance(scale, (int, float)) and isinstance(offset, (int, float)):
            self.scale, self.offset = float(scale), float(offset)
            return
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64).float(), persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float64).float(), persistent=False)

    def forward(self, x, **kwargs):
        return x * self.scale + self.offset


class Normalization(nn.Module):
    """Keras ``Normalization``: ``(x - mean) / max(sqrt(variance), 1e-7)`` (``invert``: the inverse).

    ``shape`` is the statistics' shape (the kept axes' sizes, as Keras stores ``mean``,
    ``variance`` and ``count``); ``broadcast_shape`` how they align with the input (batch axis
    included, 1 on reduced axes). ``mean``/``variance`` given (Keras's config constants) are kept
    as non-persistent buffers: the file holds no weights for them.
    """

    def __init__(self, shape: Sequence[int], invert: bool = False, broadcast_shape: Optional[Sequence[int]] = None,
                 mean=None, variance=None):  # fmt: skip
        super().__init__()
        if mean is None:
            self.register_buffer("mean", torch.zeros(tuple(shape)))
            self.register_buffer("variance", torch.ones(tuple(shape)))
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        else:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
            self.register_buffer("variance", torch.as_tensor(variance, dtype=torch.float32), persistent=False)
        self.invert = invert
        self.broadcast_shape = None if broadcast_shape is None else tuple(int(s) for s in broadcast_shape)

    def forward(self, x, **kwargs):
        if not x.is_floating_point():
            x = x.to(self.mean.dtype if self.mean.is_floating_point() else torch.float32)
        mean, var = self.mean.to(x.dtype), self.variance.to(x.dtype)
        if self.broadcast_shape is not None:
            mean, var = mean.reshape(self.broadcast_shape), var.reshape(self.broadcast_shape)
        std = torch.clamp(torch.sqrt(var), min=1e-7)  # keras.backend.epsilon()
        return x * std + mean if self.invert else (x - mean) / std


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class SeparableConv(nn.Module):
    """Keras SeparableConv1D/2D: a depthwise conv (stride, dilation) then a 1x1 pointwise conv."""

    def __init__(self, rank: int, in_channels: int, out_channels: int, kernel_size, stride, dilation,
                 depth_multiplier: int = 1, bias: bool = True, padding=0):  # fmt: skip
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[rank]
        mid = in_channels * depth_multiplier
        self.depthwise = conv(in_channels, mid, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              groups=in_channels, bias=False)  # fmt: skip
        self.pointwise = conv(mid, out_channels, 1, bias=bias)

    def forward(self, x, **kwargs):
        return self.pointwise(self.depthwise(x))


# ------------------------------------------------------------------------------- attention
_MASKED = -1e9  # Keras's large negative for masked attention scores (float32)


def _same_tensor(a, b) -> bool:
    """``b`` is ``a`` (or a view of the same storage): the same Keras tensor, with the same mask."""
    if a is b:
        return True
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.device.type == "meta":
        return False
    return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype and a.data_ptr() == b.data_ptr()


class _KerasAttentionCall(nn.Module):
    """The call convention and mask logic of Keras ``MultiHeadAttention``.

    Keras 3 passes ``[query, value(, key)]`` positionally (their Keras masks as ``mask``), tf.keras
    passes ``query`` and ``value=``/``key=`` keywords (only the query's mask comes as ``mask``; a
    ``value`` that is the query tensor itself shares its mask). Explicit ``query_mask`` /
    ``value_mask`` / ``key_mask`` (Keras 3 configs may hold them) win over ``mask``.
    ``attention_mask`` is True where attention is allowed, as in Keras.
    """

    #: inputs passed by keyword whose Keras masks the module takes as ``{name}_mask``
    keyword_masks = ("value", "key")

    def _init_call(self, num_heads: int, causal_window: Optional[int], mask_mode: str, zero_if_explicit: bool,
                   attention_axes: Optional[Sequence[int]], dropout: float):  # fmt: skip
        self.num_heads = int(num_heads)
        self.sliding_window = causal_window
        # "add": scores + where(allowed, 0, -1e9) (tf.keras, Keras 3's fused path);
        # "replace": where(allowed, scores, -1e9) (tf.keras softmax_robust_masking)
        self.mask_mode = mask_mode
        # Keras 3 zeroes the weights of masked positions on its explicit (non-fused) path
        self.zero_if_explicit = bool(zero_if_explicit)
        self.attention_axes = None if attention_axes is None else tuple(int(a) for a in attention_axes)
        self.dropout = float(dropout)  # inference only: it selects Keras 3's path, nothing is dropped

    @staticmethod
    def _unpack(query, value, key, mask, query_mask, value_mask, key_mask):
        masks = [None, None, None]
        if isinstance(mask, (list, tuple)):
            masks[: len(mask)] = list(mask)[:3]
        elif mask is not None:
            masks[0] = mask
        if isinstance(query, (list, tuple)):
            parts = list(query)
            query = parts[0]
            value = parts[1] if len(parts) > 1 else value
            key = parts[2] if len(parts) > 2 else key
        elif value is not None and masks[1] is None and masks[0] is not None and _same_tensor(query, value):
            masks[1] = masks[0]
        if value is None:
            raise TypeError("MultiHeadAttention needs a value tensor")
        query_mask = query_mask if query_mask is not None else masks[0]
        value_mask = value_mask if value_mask is not None else masks[1]
        key_mask = key_mask if key_mask is not None else masks[2]
        if key is None:
            key, key_mask = value, None
        return query, value, key, query_mask, value_mask, key_mask

    def _allowed(self, t: int, s: int, device, query_mask, value_mask, key_mask, attention_mask, causal: bool):
        """Boolean mask broadcastable to the scores ``(B, H, T, S)``, True where attention is allowed."""
        allowed = None

        def both(a, b):
            return b if a is None else a & b

        if query_mask is not None:
            allowed = query_mask.bool()[:, :, None]
        if value_mask is not None:
            allowed = both(allowed, value_mask.bool()[:, None, :])
        if key_mask is not None:
            allowed = both(allowed, key_mask.bool()[:, None, :])
        if causal:
            allowed = both(allowed, torch.ones(t, s, dtype=torch.bool, device=device).tril()[None])
        if self.sliding_window is not None:
            rows = torch.arange(t, device=device)[:, None]
            cols = torch.arange(s, device=device)[None, :]
            allowed = both(allowed, ((rows - cols).abs() < self.sliding_window)[None])
        if attention_mask is not None:
            am = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
            allowed = am if allowed is None else am & allowed
        if allowed is not None:
            while allowed.dim() < 4:  # Keras expands at the heads axis
                allowed = allowed.unsqueeze(-3)
        return allowed

    def _zeroes(self, return_scores: bool, rank: int) -> bool:
        # Keras 3 takes the fused path (no zeroing) only without dropout or scores, for rank-3 inputs
        return self.zero_if_explicit and (self.dropout > 0 or return_scores or rank != 3)

    def compute_mask(self, x, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0] if mask else None
        return mask


class EinsumProjection(nn.Module):
    """Keras ``EinsumDense`` as ``MultiHeadAttention`` uses it: the input's trailing ``len(in_shape)``
    axes contracted with a kernel of shape ``in_shape + out_shape``, plus a bias of ``out_shape``."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], bias: bool = True):
        super().__init__()
        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        self.kernel = nn.Parameter(torch.empty(self.in_shape + self.out_shape))
        self.bias = nn.Parameter(torch.zeros(self.out_shape)) if bias else None
        nn.init.xavier_uniform_(self.kernel.view(math.prod(self.in_shape), -1))

    def forward(self, x):
        y = torch.tensordot(x, self.kernel, dims=len(self.in_shape))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"kernel={self.in_shape + self.out_shape}, bias={self.bias is not None}"


class EinsumMultiHeadAttention(_KerasAttentionCall):
    """Keras ``MultiHeadAttention`` in general form: any ``key_dim``, ``value_dim``, ``output_shape``,
    ``use_bias``, ``attention_axes``; its projections keep Keras's kernel shapes
    (``query/kernel (E, H, key_dim)``, …, ``attention_output/kernel (H, value_dim, *output_shape)``)."""

    def __init__(self, query_dim: int, key_in_dim: int, value_in_dim: int, num_heads: int, key_dim: int,
                 value_dim: int, output_shape: Sequence[int], use_bias: bool = True, use_gate: bool = False,
                 attention_axes: Optional[Sequence[int]] = None, sliding_window: Optional[int] = None,
                 mask_mode: str = "add", zero_if_explicit: bool = False, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        self._init_call(num_heads, sliding_window, mask_mode, zero_if_explicit, attention_axes, dropout)
        h = int(num_heads)
        self.key_dim, self.value_dim = int(key_dim), int(value_dim)
        self.query = EinsumProjection((query_dim,), (h, key_dim), use_bias)
        self.key = EinsumProjection((key_in_dim,), (h, key_dim), use_bias)
        self.gate = EinsumProjection((query_dim,), (h, value_dim), use_bias) if use_gate else None
        self.value = EinsumProjection((value_in_dim,), (h, value_dim), use_bias)
        self.attention_output = EinsumProjection((h, value_dim), tuple(output_shape), use_bias)

    def forward(self, query, value=None, key=None, attention_mask=None, return_attention_scores=False,
                use_causal_mask=False, query_mask=None, value_mask=None, key_mask=None, mask=None, **kwargs):  # fmt: skip
        query, value, key, query_mask, value_mask, key_mask = self._unpack(
            query, value, key, mask, query_mask, value_mask, key_mask
        )
        rank = query.dim()
        q = self.query(query) * (1.0 / math.sqrt(float(self.key_dim)))  # (B, X..., H, dk)
        k = self.key(key)
        v = self.value(value)
        n = rank - 2  # axes between batch and features
        axes = tuple(range(1, n + 1)) if self.attention_axes is None else self.attention_axes
        others = tuple(a for a in range(1, n + 1) if a not in axes)
        perm = (0,) + others + (n + 1,) + axes + (n + 2,)  # (B, others..., H, attended..., d)
        qp, kp, vp = q.permute(perm), k.permute(perm), v.permute(perm)
        lead = qp.shape[: len(others) + 2]
        t_shape, s_shape = qp.shape[len(lead) : -1], kp.shape[len(lead) : -1]
        qf = qp.reshape(-1, self.num_heads, math.prod(t_shape), self.key_dim)
        kf = kp.reshape(-1, self.num_heads, math.prod(s_shape), self.key_dim)
        vf = vp.reshape(-1, self.num_heads, math.prod(s_shape), self.value_dim)
        scores = torch.matmul(qf, kf.transpose(-1, -2))  # (N, H, T, S)
        masked = any(m is not None for m in (query_mask, value_mask, key_mask, attention_mask))
        allowed = None
        if masked or use_causal_mask or self.sliding_window is not None:
            if rank != 3:
                raise NotImplementedError("masks of MultiHeadAttention over several axes are not supported")
            allowed = self._allowed(scores.shape[-2], scores.shape[-1], scores.device, query_mask, value_mask,
                                    key_mask, attention_mask, bool(use_causal_mask))  # fmt: skip
        zero = allowed is not None and self._zeroes(bool(return_attention_scores), rank)
        if allowed is not None:
            if self.mask_mode == "replace" or zero:
                scores = torch.where(allowed, scores, torch.full_like(scores, _MASKED))
            else:
                scores = scores + torch.where(allowed, 0.0, _MASKED).to(scores.dtype)
        weights = torch.softmax(scores, dim=-1)
        if zero:
            weights = torch.where(allowed, weights, torch.zeros_like(weights))
        out = torch.matmul(F.dropout(weights, self.dropout, self.training), vf)  # (N, H, T, dv)
        out = out.reshape(tuple(lead) + tuple(t_shape) + (self.value_dim,))
        out = out.permute(tuple(perm.index(i) for i in range(len(perm))))  # back to (B, X..., H, dv)
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(query))
        out = self.attention_output(out)
        if return_attention_scores:
            return out, weights.reshape(tuple(lead) + tuple(t_shape) + tuple(s_shape))
        return out


class MultiHeadAttention(_KerasAttentionCall):
    """Keras ``MultiHeadAttention`` where ``nn.MultiheadAttention`` computes it exactly
    (``key_dim == value_dim == E / H``, output size E, biases everywhere, rank-3 inputs).

    Keras masks (True = attend) become an additive float ``attn_mask`` (-1e9 where masked), as
    Keras's softmax applies them."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: Optional[int] = None, vdim: Optional[int] = None,
                 sliding_window: Optional[int] = None, zero_if_explicit: bool = False, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        self._init_call(num_heads, sliding_window, "add", zero_if_explicit, None, dropout)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=float(dropout), bias=True, kdim=kdim,
                                               vdim=vdim, batch_first=True)  # fmt: skip

    def forward(self, query, value=None, key=None, attention_mask=None, return_attention_scores=False,
                use_causal_mask=False, query_mask=None, value_mask=None, key_mask=None, mask=None, **kwargs):  # fmt: skip
        query, value, key, query_mask, value_mask, key_mask = self._unpack(
            query, value, key, mask, query_mask, value_mask, key_mask
        )
        b, t, s = query.shape[0], query.shape[1], value.shape[1]
        masked = any(m is not None for m in (query_mask, value_mask, key_mask, attention_mask))
        allowed, attn_mask = None, None
        if masked or use_causal_mask or self.sliding_window is not None:
            allowed = self._allowed(t, s, query.device, query_mask, value_mask, key_mask, attention_mask,
                                    bool(use_causal_mask))  # fmt: skip
            bias = torch.where(allowed, 0.0, _MASKED).to(query.dtype)
            attn_mask = bias.expand(b, self.num_heads, t, s).reshape(b * self.num_heads, t, s)
        need = bool(return_attention_scores)
        if allowed is not None and self._zeroes(need, query.dim()):
            out, weights = self._explicit(query, key, value, allowed)
        else:
            out, weights = self.attention(query, key, value, attn_mask=attn_mask, need_weights=need,
                                          average_attn_weights=False)  # fmt: skip
        if need:
            return out, weights
        return out

    def _explicit(self, query, key, value, allowed):
        """Keras 3's explicit path: masked scores replaced by -1e9, masked weights zeroed (a query
        that may attend to nothing gets the output projection's bias alone)."""
        att = self.attention
        e, h = att.embed_dim, self.num_heads
        d = e // h
        if att._qkv_same_embed_dim:
            wq, wk, wv = att.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = att.q_proj_weight, att.k_proj_weight, att.v_proj_weight
        bq, bk, bv = att.in_proj_bias.chunk(3)
        b, t, s = query.shape[0], query.shape[1], value.shape[1]
        q = F.linear(query, wq, bq).reshape(b, t, h, d).transpose(1, 2) * (1.0 / math.sqrt(d))
        k = F.linear(key, wk, bk).reshape(b, s, h, d).transpose(1, 2)
        v = F.linear(value, wv, bv).reshape(b, s, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = torch.where(allowed, scores, torch.full_like(scores, _MASKED))
        w = torch.where(allowed, torch.softmax(scores, dim=-1), torch.zeros_like(scores))
        ctx = torch.matmul(F.dropout(w, self.dropout, self.training), v).transpose(1, 2).reshape(b, t, e)
        return att.out_proj(ctx), w


class DotAttention(nn.Module):
    """Keras ``Attention`` (Luong: ``score_mode`` "dot" or "concat", ``use_scale``) and
    ``AdditiveAttention`` (Bahdanau) on ``[query, value(, key)]``, with Keras masks."""

    def __init__(self, score_mode: str = "dot", use_scale: bool = False, dim: Optional[int] = None,
                 causal: bool = False, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        if score_mode not in ("dot", "concat", "additive"):
            raise ValueError(f"unknown score_mode {score_mode!r}")
        self.score_mode, self.causal, self.dropout = score_mode, bool(causal), float(dropout)
        if score_mode == "additive":
            self.scale = nn.Parameter(torch.ones(int(dim))) if use_scale else None
        else:
            self.scale = nn.Parameter(torch.ones(())) if use_scale else None
            self.concat_score_weight = nn.Parameter(torch.ones(())) if score_mode == "concat" else None

    def _scores(self, q, k):
        if self.score_mode == "dot":
            scores = torch.matmul(q, k.transpose(-1, -2))
            return scores * self.scale if self.scale is not None else scores
        qk = q.unsqueeze(-2) + k.unsqueeze(-3)
        if self.score_mode == "additive":
            t = torch.tanh(qk)
            return (t * self.scale if self.scale is not None else t).sum(dim=-1)
        if self.scale is not None:
            qk = self.scale * qk
        return self.concat_score_weight * torch.tanh(qk).sum(dim=-1)

    def forward(self, inputs, mask=None, use_causal_mask=False, return_attention_scores=False, **kwargs):
        q, v = inputs[0], inputs[1]
        k = inputs[2] if len(inputs) > 2 else v
        q_mask = mask[0] if isinstance(mask, (list, tuple)) and mask else None
        v_mask = mask[1] if isinstance(mask, (list, tuple)) and len(mask) > 1 else None
        scores = self._scores(q, k)
        allowed = None if v_mask is None else v_mask.bool().unsqueeze(-2)  # (B, 1, S)
        if self.causal or use_causal_mask:
            tri = torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=scores.device).tril()
            allowed = tri[None] if allowed is None else allowed & tri
        if allowed is not None:
            scores = torch.where(allowed, scores, scores - 1e9)
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(F.dropout(weights, self.dropout, self.training), v)
        if q_mask is not None:
            out = torch.where(q_mask.bool().unsqueeze(-1), out, torch.zeros_like(out))
        return (out, weights) if return_attention_scores else out

    def compute_mask(self, x, mask=None):
        if isinstance(mask, (list, tuple)) and mask:
            return mask[0]
        return None

    def extra_repr(self) -> str:
        return f"score_mode={self.score_mode!r}, use_scale={self.scale is not None}, causal={self.causal}"
