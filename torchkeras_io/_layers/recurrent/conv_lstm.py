"""Keras ConvLSTM1D / ConvLSTM2D / ConvLSTM3D: a torch module holding the weights as Keras stores
them (no weight adapter: the generic one keeps them under their Keras names), and its builder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._layers.activation import activation_module
from torchkeras_io._layers.registry import Built, builds, cfg_int_tuple, unsupported


def _tf_same_pads(sizes, kernel, stride, dilation) -> list:
    """F.pad argument for TensorFlow 'same' padding (the odd pixel at the end), last axis first."""
    pads = []
    for n, k, s, d in reversed(list(zip(sizes, kernel, stride, dilation))):
        eff = (k - 1) * d + 1
        total = max(0, (-(-n // s) - 1) * s + eff - n)
        pads += [total // 2, total - total // 2]
    return pads


class ConvLSTM(nn.Module):
    """Keras ``ConvLSTM1D/2D/3D``: the weights as Keras stores them (``kernel`` (*k, C, 4f),
    ``recurrent_kernel`` (*k, f, 4f), ``bias`` (4f,), gates i, f, c, o); a time loop of
    convolutions. Takes and returns Keras's layout; masks keep the state as in LSTM."""

    def __init__(self, rank: int, in_channels: int, filters: int, kernel_size, strides=1, padding: str = "valid",
                 dilation_rate=1, channels_first: bool = False, use_bias: bool = True, activation=None,
                 recurrent_activation=None, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False):  # fmt: skip
        super().__init__()
        self.rank, self.filters = int(rank), int(filters)
        self.kernel_size = tuple(kernel_size)
        self.strides, self.dilation_rate = tuple(strides), tuple(dilation_rate)
        self.padding, self.channels_first = padding, bool(channels_first)
        self.return_sequences, self.return_state, self.go_backwards = return_sequences, return_state, go_backwards
        self.kernel = nn.Parameter(torch.zeros(self.kernel_size + (in_channels, 4 * filters)))
        self.recurrent_kernel = nn.Parameter(torch.zeros(self.kernel_size + (filters, 4 * filters)))
        self.bias = nn.Parameter(torch.zeros(4 * filters)) if use_bias else None
        self.activation = activation if activation is not None else nn.Tanh()
        self.recurrent_activation = recurrent_activation if recurrent_activation is not None else nn.Sigmoid()

    def _torch_weight(self, k):
        return k.permute((self.rank + 1, self.rank) + tuple(range(self.rank)))

    def _conv(self, x, w, stride, dilation, padding):
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1]
        if padding == "same":
            pads = _tf_same_pads(x.shape[2:], self.kernel_size, stride, dilation)
            if any(pads):
                x = F.pad(x, pads)
        elif padding != "valid":
            raise ValueError(f"padding {padding!r}")
        return conv(x, w, stride=stride, dilation=dilation)

    def compute_mask(self, x, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        out = mask if self.return_sequences else None
        return [out, None, None] if self.return_state else out

    def forward(self, x, initial_state=None, mask=None, training=None, **kwargs):
        if isinstance(x, (list, tuple)):
            x, extra = x[0], list(x[1:])
            initial_state = extra or initial_state
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        b, t = x.shape[:2]
        steps = x.reshape((b * t,) + tuple(x.shape[2:]))
        if not self.channels_first:
            steps = steps.movedim(-1, 1)
        ones = (1,) * self.rank
        xc = self._conv(steps, self._torch_weight(self.kernel), self.strides, self.dilation_rate, self.padding)
        if self.bias is not None:
            xc = xc + self.bias.reshape((1, -1) + ones)
        xc = xc.reshape((b, t) + tuple(xc.shape[1:]))
        if initial_state is not None:
            h, c = [s if self.channels_first else s.movedim(-1, 1) for s in initial_state]
        else:
            h = c = xc.new_zeros((b, self.filters) + tuple(xc.shape[3:]))
        if self.go_backwards:
            xc = xc.flip(1)
            mask = mask.flip(1) if mask is not None else None
        w_rec = self._torch_weight(self.recurrent_kernel)
        f, act, ract = self.filters, self.activation, self.recurrent_activation
        outs, prev = [], torch.zeros_like(h)
        for i in range(t if not xc.is_meta else 1):
            z = xc[:, i] + self._conv(h, w_rec, ones, ones, "same")
            c_new = ract(z[:, f : 2 * f]) * c + ract(z[:, :f]) * act(z[:, 2 * f : 3 * f])
            h_new = ract(z[:, 3 * f :]) * act(c_new)
            if mask is None:
                h, c, out = h_new, c_new, h_new
            else:
                m = mask[:, i].to(torch.bool).reshape((b, 1) + ones)
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
                out = prev = torch.where(m, h_new, prev)
            outs.append(out)
        if xc.is_meta:  # shape inference: one step tells the shapes
            outs = outs * t

        def keras(y, channels=1):
            return y if self.channels_first else y.movedim(channels, -1)

        y = keras(torch.stack(outs, 1), 2) if self.return_sequences else keras(outs[-1])
        return (y, keras(h), keras(c)) if self.return_state else y


@builds("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
def _conv_lstm(layer, in_shapes, ctx):
    c = layer.config
    shape = in_shapes[0]
    rank = len(shape) - 3
    if rank not in (1, 2, 3):
        raise unsupported(layer, f"expects (batch, time, *spatial, channels) input, got {shape}")
    if c.get("stateful"):
        raise unsupported(layer, "stateful=True keeps state between batches; only stateful=False is supported")
    channels_first = c.get("data_format") == "channels_first"
    cin = shape[2] if channels_first else shape[-1]
    if cin is None:
        raise unsupported(layer, f"the channel axis of its input is unknown: {shape}")
    padding = str(c.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise unsupported(layer, f"padding {padding!r}")
    act, _ = activation_module(c.get("activation", "tanh"), ctx.generation)
    ract, _ = activation_module(
        c.get("recurrent_activation", "sigmoid" if ctx.generation >= 3 else "hard_sigmoid"), ctx.generation
    )
    module = ConvLSTM(
        rank, int(cin), int(c["filters"]), cfg_int_tuple(c["kernel_size"], rank),
        cfg_int_tuple(c.get("strides", 1) or 1, rank), padding, cfg_int_tuple(c.get("dilation_rate", 1) or 1, rank),
        channels_first, bool(c.get("use_bias", True)), act, ract, bool(c.get("return_sequences", False)),
        bool(c.get("return_state", False)), bool(c.get("go_backwards", False)),
    )  # fmt: skip
    return Built(module, "cl", "", mask="consume")
