"""Small torch modules for Keras semantics that torch.nn lacks.

Models built from Keras configs are made of ordinary torch.nn modules wherever one computes
exactly what the Keras layer computes (``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``, …). The
modules here fill the gaps: TensorFlow's asymmetric 'same' padding, Keras's version-dependent
``hard_sigmoid``, reshapes that keep the batch axis, merge layers, and so on. Each is plain,
scriptable-friendly torch code with no Keras dependency.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Activation", "Embedding", "HardSigmoidTF", "Masking", "KerasReLU", "ThresholdedReLU", "SamePad", "Reshape", "Permute",
    "RepeatVector", "Merge", "Cropping", "Flatten", "Rescaling", "Normalization", "GlobalPool", "Identity", "SeparableConv",
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
        a = torch.movedim(a, ax[0], -1)
        b = torch.movedim(b, ax[1], 1 if b.dim() > 2 else -1)
        if a.dim() == 2 and b.dim() == 2:
            return (a * b).sum(-1, keepdim=True)
        out = torch.matmul(a, b) if a.dim() == 3 else torch.einsum("b...k,bk...->b...", a, b)
        return out

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
    def __init__(self, scale: float, offset: float):
        super().__init__()
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x, **kwargs):
        return x * self.scale + self.offset


class Normalization(nn.Module):
    """Keras ``Normalization``: ``(x - mean) / sqrt(variance)`` with stored statistics."""

    def __init__(self, shape: Sequence[int], invert: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.zeros(tuple(shape)))
        self.register_buffer("variance", torch.ones(tuple(shape)))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.invert = invert

    def forward(self, x, **kwargs):
        std = torch.sqrt(torch.clamp(self.variance, min=1e-7))  # keras.backend.epsilon()
        return x * std + self.mean if self.invert else (x - self.mean) / std


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
